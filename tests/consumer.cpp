// SPDX-License-Identifier: MIT
// consumer.cpp - the public header compiles as C++ and the shared library
// links from C++; quota_strerror() answers for an error code.
#include <cerrno>
#include <cstdio>
#include <cstring>

#include <quota.h>

int main()
{
	quota_client *c = nullptr;
	int r = quota_open("qtest-consumer-does-not-exist", &c);
	if (r != -ENOENT || c != nullptr)
		return 1;
	quota_close(nullptr);
	struct quota_feedback fb;
	quota_feedback_init(&fb, sizeof(fb));
	std::printf("C++ consumer: quota_open -> %s\n", quota_strerror(r));
	return std::strlen(quota_strerror(-E2BIG)) > 0 ? 0 : 1;
}
