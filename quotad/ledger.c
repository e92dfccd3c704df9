/* SPDX-License-Identifier: MIT */
/*
 * ledger.c - the spend ledger: what each quota spent in the current UTC day
 * and month, kept in DIR/SEGMENT.ledger (--state-dir) so that neither a
 * restart nor a reboot (which loses the shm segment) resets a budget.
 *
 * Written every QD_LEDGER_NS when it changed and when quotad stops: to a
 * temporary file, fsync'ed, renamed over the old one, and the directory
 * fsync'ed, so a crash leaves the old ledger or the new one, never a torn one.
 * The periodic write goes through the io_uring loop (write and fsync of the
 * file, fsync of the directory are asynchronous: a slow disk never delays a
 * reclamation or a control reply); the one at stop is synchronous.
 * Read at start: each quota's spend words are raised to the ledger's figure
 * for the period they are in (raised, never lowered: a segment that survived
 * already holds at least what was saved). Entries of a past day or month are
 * ignored. At most QD_LEDGER_NS of spend is lost when the host itself dies.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "quotad.h"

#define LEDGER_MAX (1 << 20)

static char *last_saved;

static int ledger_path(const struct daemon *d, char *buf, size_t len, const char *suffix)
{
	int n = snprintf(buf, len, "%s/%s.ledger%s", d->state_dir, d->segment + 1, suffix);
	return n > 0 && (size_t)n < len ? 0 : -ENAMETOOLONG;
}

static void periods(const struct daemon *d, uint32_t *day, uint32_t *month)
{
	int64_t off = atomic_load_explicit(&d->h->realtime_offset_ns, memory_order_relaxed);
	qc_periods_of(qd_now(d) + off, day, month);
}

static char *render(struct daemon *d)
{
	uint32_t day, month;
	periods(d, &day, &month);
	cJSON *root = cJSON_CreateObject();
	cJSON_AddStringToObject(root, "segment", d->segment + 1);
	cJSON_AddNumberToObject(root, "day", day);
	cJSON_AddNumberToObject(root, "month", month);
	cJSON *qs = cJSON_AddObjectToObject(root, "quotas");
	uint32_t count = qs_quota_count(&d->g);
	for (uint32_t id = 0; id < count; id++) {
		struct qs_quota *q = qs_quota_at(&d->g, id);
		if (!d->pub[id].word)
			continue;
		uint64_t sd = qs_spend_in(atomic_load_explicit(&q->spend_day, memory_order_relaxed), day);
		uint64_t sm = qs_spend_in(atomic_load_explicit(&q->spend_month, memory_order_relaxed), month);
		if (!sd && !sm)
			continue;
		cJSON *e = cJSON_AddObjectToObject(qs, d->pub[id].cfg.name);
		cJSON_AddNumberToObject(e, "day_nusd", (double)sd);
		cJSON_AddNumberToObject(e, "month_nusd", (double)sm);
	}
	char *s = cJSON_Print(root);
	cJSON_Delete(root);
	return s;
}

static int write_all(int fd, const char *p, size_t n)
{
	while (n) {
		ssize_t w = write(fd, p, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* What has to be written, or NULL if the ledger already says it. */
static char *pending_text(struct daemon *d, char *path, size_t plen, char *tmp, size_t tlen,
			  const char *suffix)
{
	char *s = render(d);
	if (s && last_saved && strcmp(s, last_saved) == 0) {
		free(s);
		return NULL;
	}
	if (s && (ledger_path(d, path, plen, "") < 0 || ledger_path(d, tmp, tlen, suffix) < 0)) {
		free(s);
		return NULL;
	}
	return s;
}

static void finished(struct daemon *d, const char *path, const char *tmp, char *s, int r)
{
	if (r < 0) {
		d->st.ledger_errors++;
		qd_log("warning", "spend ledger %s: %s", path, strerror(-r));
		unlink(tmp);
		free(s);
		return;
	}
	d->st.ledger_writes++;
	free(last_saved);
	last_saved = s;
	qd_log("debug", "spend ledger %s written", path);
}

/* The asynchronous write: one at a time. Stages: 1 write + 2 fsync of the
 * file (linked), then rename, then 3 fsync of the directory. */
static struct {
	bool busy;
	int fd, dfd, err;
	char *text;
	char path[4096], tmp[4200];
} aw = { .fd = -1, .dfd = -1 };

int qd_ledger_save(struct daemon *d)
{
	char path[4096], tmp[4200];
	/* Its own temporary file: an asynchronous write may be under way. */
	char *s = pending_text(d, path, sizeof(path), tmp, sizeof(tmp), ".tmp");
	if (aw.busy)
		unlink(aw.tmp);
	if (!s)
		return 0;
	int r = 0;
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
	if (fd < 0)
		r = -errno;
	if (r == 0)
		r = write_all(fd, s, strlen(s));
	if (r == 0 && fsync(fd) < 0)
		r = -errno;
	if (fd >= 0 && close(fd) < 0 && r == 0)
		r = -errno;
	if (r == 0 && rename(tmp, path) < 0)
		r = -errno;
	if (r == 0) {
		int dfd = open(d->state_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (dfd < 0 || fsync(dfd) < 0)
			r = -errno;
		if (dfd >= 0)
			close(dfd);
	}
	finished(d, path, tmp, s, r);
	return r;
}

static void submit(struct daemon *d, int stage, int fd, bool link)
{
	struct io_uring_sqe *sqe = qd_sqe(d);
	if (stage == 1)
		io_uring_prep_write(sqe, fd, aw.text, (unsigned)strlen(aw.text), 0);
	else
		io_uring_prep_fsync(sqe, fd, 0);
	if (link)
		sqe->flags |= IOSQE_IO_LINK;
	io_uring_sqe_set_data64(sqe, QD_UD(QD_EV_LEDGER, 0, stage));
}

void qd_ledger_flush(struct daemon *d)
{
	if (aw.busy || d->stop)
		return;
	aw.text = pending_text(d, aw.path, sizeof(aw.path), aw.tmp, sizeof(aw.tmp), ".async.tmp");
	if (!aw.text)
		return;
	aw.fd = open(aw.tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
	if (aw.fd < 0) {
		finished(d, aw.path, aw.tmp, aw.text, -errno);
		return;
	}
	aw.busy = true;
	aw.err = 0;
	submit(d, 1, aw.fd, true);
	submit(d, 2, aw.fd, false);
}

void qd_ledger_event(struct daemon *d, uint64_t ud, int res)
{
	uint32_t stage = QD_UD_LO(ud);
	if (!aw.busy)
		return;
	if (stage == 1) {
		if (res != (int)strlen(aw.text))
			aw.err = res < 0 ? res : -EIO; /* the linked fsync is cancelled */
		return;
	}
	if (stage == 2) {
		if (res < 0 && !aw.err)
			aw.err = res;
		if (close(aw.fd) < 0 && !aw.err)
			aw.err = -errno;
		aw.fd = -1;
		if (!aw.err && rename(aw.tmp, aw.path) < 0)
			aw.err = -errno;
		if (!aw.err && (aw.dfd = open(d->state_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
			aw.err = -errno;
		if (!aw.err) {
			submit(d, 3, aw.dfd, false);
			return;
		}
	} else if (res < 0 && !aw.err) {
		aw.err = res;
	}
	if (aw.dfd >= 0)
		close(aw.dfd);
	aw.dfd = -1;
	aw.busy = false;
	finished(d, aw.path, aw.tmp, aw.text, aw.err);
	aw.text = NULL;
}

static uint64_t get_u64(const cJSON *o, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
	if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0) || v->valuedouble > (double)QS_SPEND_AMOUNT_MAX)
		return 0;
	return (uint64_t)v->valuedouble;
}

int qd_ledger_restore(struct daemon *d)
{
	if (mkdir(d->state_dir, 0750) < 0 && errno != EEXIST) {
		qd_log("warning", "--state-dir %s: %s", d->state_dir, strerror(errno));
		return -errno;
	}
	char path[4096];
	if (ledger_path(d, path, sizeof(path), "") < 0)
		return -ENAMETOOLONG;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		if (errno != ENOENT)
			qd_log("warning", "spend ledger %s: %s", path, strerror(errno));
		else
			qd_log("info", "spend ledger %s: none yet", path);
		return errno == ENOENT ? 0 : -errno;
	}
	char *buf = malloc(LEDGER_MAX + 1);
	ssize_t n = buf ? read(fd, buf, LEDGER_MAX) : -1;
	close(fd);
	cJSON *root = n > 0 ? cJSON_ParseWithLength(buf, (size_t)n) : NULL;
	free(buf);
	if (!cJSON_IsObject(root)) {
		cJSON_Delete(root);
		qd_log("warning", "spend ledger %s: unreadable or malformed, ignored", path);
		return -EBADMSG;
	}
	uint32_t day, month, restored = 0;
	periods(d, &day, &month);
	bool same_day = get_u64(root, "day") == day, same_month = get_u64(root, "month") == month;
	const cJSON *qs = cJSON_GetObjectItemCaseSensitive(root, "quotas");
	uint32_t count = qs_quota_count(&d->g);
	for (uint32_t id = 0; cJSON_IsObject(qs) && id < count; id++) {
		struct qs_quota *q = qs_quota_at(&d->g, id);
		if (!d->pub[id].word)
			continue;
		const cJSON *e = cJSON_GetObjectItemCaseSensitive(qs, d->pub[id].cfg.name);
		if (!cJSON_IsObject(e))
			continue;
		if (same_day)
			qc_spend_raise(&q->spend_day, day, get_u64(e, "day_nusd"));
		if (same_month)
			qc_spend_raise(&q->spend_month, month, get_u64(e, "month_nusd"));
		restored++;
	}
	cJSON_Delete(root);
	qd_log("info", "spend ledger %s: restored %u quota%s%s", path, restored, restored == 1 ? "" : "s",
	       same_month ? "" : " (from an earlier month: ignored)");
	return 0;
}
