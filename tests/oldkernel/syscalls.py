"""Every system call Linux added after 4.18 (RHEL 8's kernel), with the version that
added it: what the old-kernel tier (launch.py) makes answer ENOSYS.

Runs in: the test runner (read by launch.py and by tests/oldkernel's own unit test).

Numbers from 424 up are the same on every architecture but alpha (the syscall tables
were unified in 5.1, include/uapi/asm-generic/unistd.h), so the table names one number
for each; libseccomp is given numbers, not names, because Debian 12's libseccomp does
not know the newest names. 4.19 and 5.0 added no system call on x86_64; the 403-423
range of 5.1 (64-bit time for 32-bit ABIs) does not exist on 64-bit ABIs.

What a filter cannot take away is listed in README.md beside this file: new flags of
old calls (CLONE_PIDFD, P_PIDFD, CLOSE_RANGE_* are in new calls, fine), new files
(cgroup.kill), new mount behaviour (overlayfs in a user namespace).
"""

from __future__ import annotations

# (name, number, the Linux version that added it)
AFTER_4_18 = (
    ("pidfd_send_signal", 424, "5.1"),
    ("io_uring_setup", 425, "5.1"),
    ("io_uring_enter", 426, "5.1"),
    ("io_uring_register", 427, "5.1"),
    ("open_tree", 428, "5.2"),
    ("move_mount", 429, "5.2"),
    ("fsopen", 430, "5.2"),
    ("fsconfig", 431, "5.2"),
    ("fsmount", 432, "5.2"),
    ("fspick", 433, "5.2"),
    ("pidfd_open", 434, "5.3"),
    ("clone3", 435, "5.3"),
    ("close_range", 436, "5.9"),
    ("openat2", 437, "5.6"),
    ("pidfd_getfd", 438, "5.6"),
    ("faccessat2", 439, "5.8"),
    ("process_madvise", 440, "5.10"),
    ("epoll_pwait2", 441, "5.11"),
    ("mount_setattr", 442, "5.12"),
    ("quotactl_fd", 443, "5.14"),
    ("landlock_create_ruleset", 444, "5.13"),
    ("landlock_add_rule", 445, "5.13"),
    ("landlock_restrict_self", 446, "5.13"),
    ("memfd_secret", 447, "5.14"),
    ("process_mrelease", 448, "5.15"),
    ("futex_waitv", 449, "5.16"),
    ("set_mempolicy_home_node", 450, "5.17"),
    ("cachestat", 451, "6.5"),
    ("fchmodat2", 452, "6.6"),
    ("map_shadow_stack", 453, "6.6"),
    ("futex_wake", 454, "6.7"),
    ("futex_wait", 455, "6.7"),
    ("futex_requeue", 456, "6.7"),
    ("statmount", 457, "6.8"),
    ("listmount", 458, "6.8"),
    ("lsm_get_self_attr", 459, "6.8"),
    ("lsm_set_self_attr", 460, "6.8"),
    ("lsm_list_modules", 461, "6.8"),
    ("mseal", 462, "6.10"),
    ("setxattrat", 463, "6.13"),
    ("getxattrat", 464, "6.13"),
    ("listxattrat", 465, "6.13"),
    ("removexattrat", 466, "6.13"),
    ("open_tree_attr", 467, "6.15"),
    ("file_getattr", 468, "6.17"),
    ("file_setattr", 469, "6.17"),
)
# Numbers above the table's last, up to this one, answer ENOSYS too: whatever a newer
# kernel adds is not in 4.18 either.
LAST_NUMBER = 600
