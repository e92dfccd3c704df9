/* SPDX-License-Identifier: MIT */
/*
 * test_attach.c - quota_open refuses a foreign, truncated, newer or corrupt
 * segment with a negative errno, never a crash or an out-of-bounds read (the
 * suite also runs under ASan+UBSan).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <criterion/criterion.h>

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
static void unknown_incompat(void *b, uint64_t s, int fd) { (void)s, (void)fd; ((struct qs_header *)b)->incompat_flags |= 1ULL << 40; }
static void truncated(void *b, uint64_t s, int fd) { (void)b; cr_assert_eq(ftruncate(fd, (off_t)(s - 4096)), 0); }
static void tiny(void *b, uint64_t s, int fd) { (void)b, (void)s; cr_assert_eq(ftruncate(fd, 100), 0); }
static void client_off_out(void *b, uint64_t s, int fd) { (void)fd; ((struct qs_header *)b)->client_off = s; }
static void quota_off_wrap(void *b, uint64_t s, int fd) { (void)s, (void)fd; ((struct qs_header *)b)->quota_off = UINT64_MAX - 63; }
static void capacity_huge(void *b, uint64_t s, int fd) { (void)s, (void)fd; ((struct qs_header *)b)->client_capacity = 1u << 30; }
static void size_lies(void *b, uint64_t s, int fd) { (void)fd; ((struct qs_header *)b)->segment_size = s * 2; }
static void count_over(void *b, uint64_t s, int fd) { (void)s, (void)fd; atomic_store(&((struct qs_header *)b)->quota_count, 1000); }
static void index_out(void *b, uint64_t s, int fd) { (void)s, (void)fd; qs_index_at(b)[3].id1 = 77; }
static void nlimits_out(void *b, uint64_t s, int fd) { (void)s, (void)fd; qs_quota_at(b, 0)->nlimits = 9; }
static void cfg_forged(void *b, uint64_t s, int fd) { (void)s, (void)fd; qs_quota_at(b, 0)->cfg[0].tau_ns *= 4; }
static void name_unterminated(void *b, uint64_t s, int fd) { (void)s, (void)fd; memset(qs_quota_at(b, 1)->name, 'x', 64); }
static void still_initializing(void *b, uint64_t s, int fd) { (void)s, (void)fd; atomic_store(&((struct qs_header *)b)->state, QS_STATE_INITIALIZING); }

Test(attach, good_segment) { cr_assert_eq(open_after(nothing), 0); }
Test(attach, wrong_magic) { cr_assert_eq(open_after(bad_magic), -EBADMSG); }
Test(attach, newer_major) { cr_assert_eq(open_after(newer_major), -EPROTONOSUPPORT); }
Test(attach, older_major) { cr_assert_eq(open_after(older_major), -EBADMSG); }
Test(attach, unknown_incompat_flag) { cr_assert_eq(open_after(unknown_incompat), -EPROTONOSUPPORT); }
Test(attach, truncated_segment) { cr_assert_eq(open_after(truncated), -EBADMSG); }
Test(attach, tiny_segment) { cr_assert_eq(open_after(tiny), -EBADMSG); }
Test(attach, client_offset_out_of_range) { cr_assert_eq(open_after(client_off_out), -EBADMSG); }
Test(attach, quota_offset_wraps) { cr_assert_eq(open_after(quota_off_wrap), -EBADMSG); }
Test(attach, capacity_out_of_range) { cr_assert_eq(open_after(capacity_huge), -EBADMSG); }
Test(attach, size_mismatch) { cr_assert_eq(open_after(size_lies), -EBADMSG); }
Test(attach, quota_count_out_of_range) { cr_assert_eq(open_after(count_over), -EBADMSG); }
Test(attach, index_entry_out_of_range) { cr_assert_eq(open_after(index_out), -EBADMSG); }
Test(attach, too_many_limits) { cr_assert_eq(open_after(nlimits_out), -EBADMSG); }
Test(attach, forged_limit_config) { cr_assert_eq(open_after(cfg_forged), -EBADMSG); }
Test(attach, unterminated_name) { cr_assert_eq(open_after(name_unterminated), -EBADMSG); }
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
