/* SPDX-License-Identifier: MIT */
/*
 * test_attach.c - quota_open refuses a foreign, truncated, newer or corrupt
 * segment header with a negative errno, and damage past the header (quota
 * count, name index, config records) is refused where it is read, never a
 * crash or an out-of-bounds read (the suite also runs under ASan+UBSan).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "config.h"
#include "layout.h"
#include "testlib.h"

TestSuite(attach, .fini = tl_cleanup);

/* Create a good segment, map it, let @corrupt damage it, then try to open. */
static int open_after(void (*corrupt)(void *base, uint64_t size, int fd))
{
	char name[128], path[140];
	tl_name(name, sizeof(name), "attach");
	tl_create(name, "{\"quotas\": {\"a\": {\"rpm\": 60, \"tpm\": 1000}, \"b\": {\"rpd\": 5}}}");
	snprintf(path, sizeof(path), "/%s", name);
	int fd = shm_open(path, O_RDWR, 0);
	cr_assert_geq(fd, 0);
	struct stat st;
	cr_assert_eq(fstat(fd, &st), 0);
	void *base = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	cr_assert_neq(base, MAP_FAILED);
	corrupt(base, (uint64_t)st.st_size, fd);
	munmap(base, (size_t)st.st_size);
	close(fd);
	quota_client *c = NULL;
	int r = quota_open(name, &c);
	if (r == 0)
		quota_close(c);
	return r;
}

static void nothing(void *b, uint64_t s, int fd) { (void)b, (void)s, (void)fd; }
static void bad_magic(void *b, uint64_t s, int fd) { (void)s, (void)fd; ((struct qs_header *)b)->magic ^= 1; }
static void newer_major(void *b, uint64_t s, int fd) { (void)s, (void)fd; ((struct qs_header *)b)->major = QS_MAJOR + 1; }
static void older_major(void *b, uint64_t s, int fd) { (void)s, (void)fd; ((struct qs_header *)b)->major = 0; }
/* Layout major 2 had rows of 192 B: its client stride is not ours. */
static void major_2(void *b, uint64_t s, int fd) { (void)s, (void)fd; ((struct qs_header *)b)->major = 2; }
static void unknown_incompat(void *b, uint64_t s, int fd) { (void)s, (void)fd; ((struct qs_header *)b)->incompat_flags |= 1ULL << 40; }
static void truncated(void *b, uint64_t s, int fd) { (void)b; cr_assert_eq(ftruncate(fd, (off_t)(s - 4096)), 0); }
static void tiny(void *b, uint64_t s, int fd) { (void)b, (void)s; cr_assert_eq(ftruncate(fd, 100), 0); }
static void client_off_out(void *b, uint64_t s, int fd) { (void)fd; ((struct qs_header *)b)->client_off = s; }
static void quota_off_wrap(void *b, uint64_t s, int fd) { (void)s, (void)fd; ((struct qs_header *)b)->quota_off = UINT64_MAX - 63; }
static void capacity_huge(void *b, uint64_t s, int fd) { (void)s, (void)fd; ((struct qs_header *)b)->client_capacity = 1u << 30; }
static void size_lies(void *b, uint64_t s, int fd) { (void)fd; ((struct qs_header *)b)->segment_size = s * 2; }
/* The record quota @id's config word names, for the corruptions below. */
static struct qs_record *record_of(void *b, uint64_t s, uint32_t id)
{
	struct qs_geom g;
	cr_assert_eq(qs_geom_load(&g, b, s), 0);
	uint64_t w = atomic_load(&qs_quota_at(&g, id)->cfg);
	cr_assert_neq(w, 0);
	struct qs_record *r = qs_record_at(&g, QS_CFG_IDX1(w) - 1);
	cr_assert_not_null(r);
	return r;
}

/* The published name table. */
static struct qs_index *index_of(void *b, uint64_t s, uint32_t *ret_cap)
{
	struct qs_geom g;
	cr_assert_eq(qs_geom_load(&g, b, s), 0);
	*ret_cap = g.index_capacity;
	return g.index[atomic_load(&g.h->index_word) & 1];
}

static void count_over(void *b, uint64_t s, int fd) { (void)s, (void)fd; atomic_store(&((struct qs_header *)b)->quota_count, 1000); }
/* Every entry of the published name table names id 77 (out of range). */
static void index_out(void *b, uint64_t s, int fd)
{
	(void)fd;
	uint32_t cap;
	struct qs_index *tab = index_of(b, s, &cap);
	for (uint32_t i = 0; i < cap; i++)
		atomic_store(&tab[i].id1, 78);
}
/* Every entry of the published table that names "a" (id 0) names "b" (id 1). */
static void index_wrong_id(void *b, uint64_t s, int fd)
{
	(void)fd;
	uint32_t cap;
	struct qs_index *tab = index_of(b, s, &cap);
	for (uint32_t i = 0; i < cap; i++)
		if (atomic_load(&tab[i].id1) == 1)
			atomic_store(&tab[i].id1, 2);
}
static void nlimits_out(void *b, uint64_t s, int fd) { (void)fd; record_of(b, s, 0)->nlimits = 9; }
/* A record cannot forge derived constants (tau, T, capacity are recomputed
 * from the source values by whoever reads it); what it can forge is a source
 * value quotad would never write: four times the largest burst. */
static void cfg_forged(void *b, uint64_t s, int fd) { (void)fd; record_of(b, s, 0)->lim[0].burst_ppm = 4000000; }
static void kind_twice(void *b, uint64_t s, int fd) { (void)fd; struct qs_record *r = record_of(b, s, 0); r->lim[1].kind = r->lim[0].kind; }
static void name_unterminated(void *b, uint64_t s, int fd) { (void)fd; memset(record_of(b, s, 1)->name, 'x', 64); }
static void record_of_other_quota(void *b, uint64_t s, int fd) { (void)fd; record_of(b, s, 1)->quota_id = 0; }
static void still_initializing(void *b, uint64_t s, int fd) { (void)s, (void)fd; atomic_store(&((struct qs_header *)b)->state, QS_STATE_INITIALIZING); }

Test(attach, good_segment) { cr_assert_eq(open_after(nothing), 0); }
Test(attach, wrong_magic) { cr_assert_eq(open_after(bad_magic), -EBADMSG); }
Test(attach, newer_major) { cr_assert_eq(open_after(newer_major), -EPROTONOSUPPORT); }
Test(attach, older_major) { cr_assert_eq(open_after(older_major), -EBADMSG); }
Test(attach, layout_major_2) { cr_assert_eq(QS_MAJOR, 3); cr_assert_eq(open_after(major_2), -EBADMSG); }
Test(attach, unknown_incompat_flag) { cr_assert_eq(open_after(unknown_incompat), -EPROTONOSUPPORT); }
Test(attach, truncated_segment) { cr_assert_eq(open_after(truncated), -EBADMSG); }
Test(attach, tiny_segment) { cr_assert_eq(open_after(tiny), -EBADMSG); }
Test(attach, client_offset_out_of_range) { cr_assert_eq(open_after(client_off_out), -EBADMSG); }
Test(attach, quota_offset_wraps) { cr_assert_eq(open_after(quota_off_wrap), -EBADMSG); }
Test(attach, capacity_out_of_range) { cr_assert_eq(open_after(capacity_huge), -EBADMSG); }
Test(attach, size_mismatch) { cr_assert_eq(open_after(size_lies), -EBADMSG); }

/*
 * Damage past the header (the quota count, the name index, a config
 * record) is not geometry: quota_open cannot rule it out once and for all,
 * since any process may scribble over it later. Each read of it is checked
 * instead: the open succeeds, the damaged part is refused with -ENOENT
 * (lookup) or -EBADMSG (a damaged record), never a wrong id or a crash, and
 * the intact quotas keep working.
 */
struct use {
	int find_a, find_b;      /* quota_find("a"), quota_find("b") */
	int resv[2], info[2];    /* quota_reserve / quota_info of ids 0 and 1 */
	int count;               /* quota_count() */
	int resv_far, info_far;  /* id 999 */
};

static struct use use_after(void (*corrupt)(void *base, uint64_t size, int fd))
{
	char name[128], path[140];
	tl_name(name, sizeof(name), "use");
	tl_create(name, "{\"clock\": \"manual\", "
		  "\"quotas\": {\"a\": {\"rpm\": 60, \"tpm\": 1000}, \"b\": {\"rpd\": 5}}}");
	snprintf(path, sizeof(path), "/%s", name);
	int fd = shm_open(path, O_RDWR, 0);
	cr_assert_geq(fd, 0);
	struct stat st;
	cr_assert_eq(fstat(fd, &st), 0);
	void *base = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	cr_assert_neq(base, MAP_FAILED);
	corrupt(base, (uint64_t)st.st_size, fd);
	munmap(base, (size_t)st.st_size);
	close(fd);
	quota_client *c = NULL;
	int r = quota_open(name, &c);
	cr_assert_eq(r, 0, "damage past the header is refused per quota, not at open: %s",
		     quota_strerror(r));
	struct use u;
	struct quota_ticket t;
	struct quota_info in;
	const struct quota_cost one = { 1, 1, 0 };
	u.find_a = quota_find(c, "a");
	u.find_b = quota_find(c, "b");
	for (int id = 0; id < 2; id++) {
		u.resv[id] = quota_reserve(c, id, &one, 0, &t);
		u.info[id] = quota_info(c, id, &in, sizeof(in));
	}
	u.count = quota_count(c);
	u.resv_far = quota_reserve(c, 999, &one, 0, &t);
	u.info_far = quota_info(c, 999, &in, sizeof(in));
	quota_close(c);
	return u;
}

/* Quota "a" (id 0) is damaged, "b" (id 1) intact. */
static void expect_a_refused(struct use u)
{
	cr_assert_eq(u.find_a, -ENOENT);
	cr_assert_eq(u.resv[0], -EBADMSG);
	cr_assert_eq(u.info[0], -EBADMSG);
	cr_assert_eq(u.find_b, 1);
	cr_assert_eq(u.resv[1], 0);
	cr_assert_eq(u.info[1], 0);
}

Test(attach, damage_past_the_header_is_harmless)
{
	struct use u = use_after(nothing);
	cr_assert_eq(u.find_a, 0);
	cr_assert_eq(u.find_b, 1);
	cr_assert_eq(u.resv[0], 0);
	cr_assert_eq(u.resv[1], 0);
	cr_assert_eq(u.count, 2);
	cr_assert_eq(u.resv_far, -ENOENT);
	cr_assert_eq(u.info_far, -ENOENT);
}

Test(attach, quota_count_out_of_range)
{
	/* The count is a control word, not geometry: bounded by the capacity
	 * the library copied at open, and ids past it have no config. */
	struct use u = use_after(count_over);
	cr_assert_leq(u.count, QD_DEFAULT_MAX_QUOTAS);
	cr_assert_eq(u.resv_far, -ENOENT);
	cr_assert_eq(u.info_far, -ENOENT);
	cr_assert_eq(u.find_a, 0);
	cr_assert_eq(u.resv[0], 0);
}

Test(attach, index_entry_out_of_range)
{
	struct use u = use_after(index_out);
	cr_assert_eq(u.find_a, -ENOENT);
	cr_assert_eq(u.find_b, -ENOENT);
	cr_assert_eq(u.resv[0], 0, "the quotas themselves are intact");
}

Test(attach, index_entry_names_another_quota)
{
	/* The index is checked against the record: never a wrong id. */
	struct use u = use_after(index_wrong_id);
	cr_assert_eq(u.find_a, -ENOENT);
	cr_assert_eq(u.find_b, 1);
}

Test(attach, too_many_limits) { expect_a_refused(use_after(nlimits_out)); }
Test(attach, forged_limit_config) { expect_a_refused(use_after(cfg_forged)); }
Test(attach, limit_kind_twice) { expect_a_refused(use_after(kind_twice)); }

Test(attach, unterminated_name)
{
	struct use u = use_after(name_unterminated);
	cr_assert_eq(u.find_b, -ENOENT);
	cr_assert_eq(u.resv[1], -EBADMSG);
	cr_assert_eq(u.info[1], -EBADMSG);
	cr_assert_eq(u.find_a, 0);
	cr_assert_eq(u.resv[0], 0);
}

Test(attach, record_of_another_quota)
{
	struct use u = use_after(record_of_other_quota);
	cr_assert_eq(u.find_b, -ENOENT);
	cr_assert_eq(u.resv[1], -EBADMSG);
	cr_assert_eq(u.find_a, 0);
}
Test(attach, initializing_times_out, .timeout = 30) { cr_assert_eq(open_after(still_initializing), -ETIMEDOUT); }

Test(attach, missing_segment_and_bad_names)
{
	quota_client *c = (quota_client *)0x1;
	cr_assert_eq(quota_open("qtest-does-not-exist-xyz", &c), -ENOENT);
	cr_assert_eq(c, (quota_client *)0x1, "output untouched on failure");
	cr_assert_eq(quota_open("a/b", &c), -EINVAL);
	cr_assert_eq(quota_open("", &c), -EINVAL);
	cr_assert_eq(quota_open("x", NULL), -EINVAL);
}

Test(attach, world_writable_segment_is_refused)
{
	char name[128], path[140];
	tl_name(name, sizeof(name), "ww");
	tl_create(name, "{\"quotas\": {\"a\": {\"rpm\": 60}}}");
	snprintf(path, sizeof(path), "/%s", name);
	int fd = shm_open(path, O_RDWR, 0);
	cr_assert_geq(fd, 0);
	cr_assert_eq(fchmod(fd, 0666), 0);
	close(fd);
	quota_client *c;
	cr_assert_eq(quota_open(name, &c), -EACCES);
}

Test(attach, a_segment_being_created_is_waited_for, .timeout = 30)
{
	/* All zeroes (sized, header not yet written) is "initializing", not
	 * foreign: quota_open waits, then gives up with -ETIMEDOUT. */
	char name[128], path[140];
	tl_name(name, sizeof(name), "zero");
	snprintf(path, sizeof(path), "/%s", name);
	int fd = shm_open(path, O_RDWR | O_CREAT | O_EXCL, 0660);
	cr_assert_geq(fd, 0);
	cr_assert_eq(ftruncate(fd, 65536), 0);
	close(fd);
	quota_client *c;
	int r = quota_open(name, &c);
	shm_unlink(path);
	cr_assert_eq(r, -ETIMEDOUT);
}
