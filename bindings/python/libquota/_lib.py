# SPDX-License-Identifier: MIT
"""ctypes declarations of libquota.so.2: the C structs of quota.h and the
prototypes of the functions this package calls. Nothing else lives here.

The library is loaded by its SONAME through the dynamic loader (so
LD_LIBRARY_PATH and the system's library directories apply); the struct
layouts are those of quota.h version 2.2 (the package needs a library of
2.1 or later: load() says so otherwise); the package's tests compare their
sizes with the C compiler's. A 2.1 library zeroes the fields 2.2 appended
to struct quota_info (libquota(3)), which read as "not known yet"."""

import ctypes

SONAME = "libquota.so.2"

QUOTA_NAME_MAX = 63
QUOTA_INFO_KINDS = 16
QUOTA_INFO_REASONS = 32
QUOTA_LANES_MAX = 4
QUOTA_LANE_DEFAULT = 2**32 - 1  # the quota's last (lowest) lane
QUOTA_LEARN_HIST = 16
# quota_info.learned_*: in the open-ended last bucket (learned_output: "2048
# or more", the caller's max_tokens; prompts: 131072 or more; ratio: 8 or more).
LEARNED_OPEN = 2**64 - 1
# quota_info.learned_ratio_*: in 1/256 of the estimate.
RATIO_ONE = 256
# The upper edges of quota_info.output_hist's half-octave buckets (the last
# is open: 2048 and up).
OUTPUT_HIST_EDGES = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, None)

# enum quota_limit_kind, in order.
RATE_KINDS = ("rpm", "rpd", "tpm", "tpd", "itpm", "itpd", "otpm", "otpd")
# enum quota_reject_reason after the rate kinds, in order.
REJECT_REASONS = RATE_KINDS + ("inflight", "spend", "too_big", "paused")


class Cost(ctypes.Structure):
    _fields_ = [
        ("requests", ctypes.c_uint64),
        ("input_tokens", ctypes.c_uint64),
        ("output_tokens", ctypes.c_uint64),
    ]


class Ticket(ctypes.Structure):
    _fields_ = [
        ("waited_ns", ctypes.c_int64),
        ("retry_after_ns", ctypes.c_int64),
        ("private_", ctypes.c_uint64 * 48),
    ]


class LimitInfo(ctypes.Structure):
    _fields_ = [
        ("limit", ctypes.c_uint64),
        ("capacity", ctypes.c_uint64),
        ("available", ctypes.c_uint64),
        ("period_ns", ctypes.c_int64),
    ]


class Info(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char * (QUOTA_NAME_MAX + 1)),
        ("removed", ctypes.c_int32),
        ("refund_actual", ctypes.c_int32),
        ("rate", LimitInfo * QUOTA_INFO_KINDS),
        ("max_inflight", ctypes.c_uint64),
        ("inflight", ctypes.c_uint64),
        ("context_window", ctypes.c_uint64),
        ("price_input_pusd", ctypes.c_uint64),
        ("price_output_pusd", ctypes.c_uint64),
        ("budget_day_nusd", ctypes.c_uint64),
        ("spent_day_nusd", ctypes.c_uint64),
        ("budget_month_nusd", ctypes.c_uint64),
        ("spent_month_nusd", ctypes.c_uint64),
        ("paused_ns", ctypes.c_int64),
        ("admitted", ctypes.c_uint64),
        ("admitted_input_tokens", ctypes.c_uint64),
        ("admitted_output_tokens", ctypes.c_uint64),
        ("rejected", ctypes.c_uint64 * QUOTA_INFO_REASONS),
        ("reclaimed", ctypes.c_uint64),
        ("repaired", ctypes.c_uint64),
        ("generation", ctypes.c_uint64),
        # 2.1: lanes, learning, alarms.
        ("lanes", ctypes.c_uint32),
        ("learn", ctypes.c_uint32),
        ("learned_output", ctypes.c_uint64),
        ("learned_samples", ctypes.c_uint64),
        ("output_hist", ctypes.c_uint64 * QUOTA_LEARN_HIST),
        ("alarm_held", ctypes.c_uint64),
        ("alarm_over", ctypes.c_uint64),
        ("alarm_held_ns", ctypes.c_int64),
        ("alarm_over_pct", ctypes.c_uint64),
        # 2.2: prompts, the output's actual/estimated ratio, tickets still open.
        ("learned_input_p50", ctypes.c_uint64),
        ("learned_input_p99", ctypes.c_uint64),
        ("learned_ratio_p50", ctypes.c_uint64),
        ("learned_ratio_p99", ctypes.c_uint64),
        ("input_hist", ctypes.c_uint64 * QUOTA_LEARN_HIST),
        ("ratio_hist", ctypes.c_uint64 * QUOTA_LEARN_HIST),
        ("held_open", ctypes.c_uint64),
        ("held_flips", ctypes.c_uint64),
    ]


class ReserveOpts(ctypes.Structure):
    """struct quota_reserve_opts (2.1; queued_since_ns 2.2); fill with quota_reserve_opts_init()."""
    _fields_ = [
        ("size", ctypes.c_uint32),
        ("lane", ctypes.c_uint32),
        ("flags", ctypes.c_uint64),
        ("max_output_tokens", ctypes.c_uint64),
        ("queued_since_ns", ctypes.c_int64),  # 2.2
        ("reserved_", ctypes.c_uint64 * 4),
    ]


class Feedback(ctypes.Structure):
    _fields_ = [
        ("size", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("limit_requests", ctypes.c_int64),
        ("remaining_requests", ctypes.c_int64),
        ("reset_requests_ns", ctypes.c_int64),
        ("limit_tokens", ctypes.c_int64),
        ("remaining_tokens", ctypes.c_int64),
        ("reset_tokens_ns", ctypes.c_int64),
        ("retry_after_ns", ctypes.c_int64),
        ("reserved_", ctypes.c_int64 * 9),
    ]


_lib = None


def load():
    """The loaded library (once per process). Raises OSError if the dynamic
    loader cannot find libquota.so.2, or finds one older than 2.1."""
    global _lib
    if _lib is not None:
        return _lib
    # CDLL (not PyDLL): every call releases the GIL, so a reservation that
    # sleeps in the library lets the process's other threads run.
    lib = ctypes.CDLL(SONAME, use_errno=False)
    H = ctypes.c_void_p
    P = ctypes.POINTER
    proto = {
        "quota_open": (ctypes.c_int, [ctypes.c_char_p, P(H)]),
        "quota_close": (None, [H]),
        "quota_find": (ctypes.c_int, [H, ctypes.c_char_p]),
        "quota_reserve": (ctypes.c_int, [H, ctypes.c_int, P(Cost), ctypes.c_int64, P(Ticket)]),
        "quota_reserve_opts_init": (None, [P(ReserveOpts), ctypes.c_size_t]),
        "quota_reserve_ex": (ctypes.c_int, [H, ctypes.c_int, P(Cost), ctypes.c_int64,
                                            P(ReserveOpts), P(Ticket)]),
        "quota_lane": (ctypes.c_int, [H, ctypes.c_int, ctypes.c_char_p]),
        "quota_extend": (ctypes.c_int, [H, P(Ticket), P(Cost), ctypes.c_int64]),
        "quota_settle_partial": (ctypes.c_int, [H, P(Ticket), P(Cost)]),
        "quota_commit": (ctypes.c_int, [H, P(Ticket), P(Cost)]),
        "quota_cancel": (ctypes.c_int, [H, P(Ticket)]),
        "quota_backoff": (ctypes.c_int, [H, ctypes.c_int, ctypes.c_int64]),
        "quota_clock_set": (ctypes.c_int, [H, ctypes.c_int64]),
        "quota_strerror": (ctypes.c_char_p, [ctypes.c_int]),
        "quota_now": (ctypes.c_int64, [H]),
        "quota_ticket_time": (ctypes.c_int64, [P(Ticket)]),
        "quota_count": (ctypes.c_int, [H]),
        "quota_info": (ctypes.c_int, [H, ctypes.c_int, P(Info), ctypes.c_size_t]),
        "quota_feedback_init": (None, [P(Feedback), ctypes.c_size_t]),
        "quota_feedback_header": (ctypes.c_int, [P(Feedback), ctypes.c_char_p, ctypes.c_char_p]),
        "quota_feedback_apply": (ctypes.c_int, [H, ctypes.c_int, P(Feedback)]),
        "quota_parse_duration": (ctypes.c_int, [ctypes.c_char_p, P(ctypes.c_int64)]),
    }
    for name, (res, args) in proto.items():
        try:
            f = getattr(lib, name)
        except AttributeError:
            raise OSError("%s has no %s: this package needs libquota 2.1 or later"
                          % (SONAME, name)) from None
        f.restype = res
        f.argtypes = args
    _lib = lib
    return lib
