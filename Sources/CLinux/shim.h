#ifndef TIBET_TWIN_CLINUX_SHIM_H
#define TIBET_TWIN_CLINUX_SHIM_H

// Linux calls the Modbus server's event loop needs and Swift's Glibc module does not give:
// it does not include <sys/epoll.h> or <sys/eventfd.h>, and it is built without _GNU_SOURCE,
// so accept4 and pthread_setname_np are not declared. Kept apart from CModbus, which is only
// the door to libmodbus, the way swift-nio keeps CNIOLinux.
//
// accept4 and pthread_setname_np are bound under CLinux_ names (an asm label names the libc
// symbol), which cannot clash with a declaration glibc makes under _GNU_SOURCE. Their
// parameters use plain C types on purpose: including <sys/socket.h> or <pthread.h> here would
// pull SOCK_STREAM & co. into this module and hide them from Swift files that import Glibc
// but not CLinux.
// The system headers libmodbus's and the old CModbus shim pulled in, so a Swift file that
// imports CLinux for a socket constant finds it whatever the build order (see the ModbusTests
// support files).
#include <sys/param.h>
#include <sys/select.h>
#include <errno.h>

#if defined(__linux__)
#include <sys/epoll.h>
#include <sys/eventfd.h>
/// accept4(2); `addr` is a `struct sockaddr *`, `addrlen` a `socklen_t *`.
extern int CLinux_accept4(int sockfd, void *addr, unsigned int *addrlen, int flags) __asm__("accept4");
/// pthread_setname_np(3); `thread` is a `pthread_t`.
extern int CLinux_pthread_setname_np(unsigned long thread, const char *name) __asm__("pthread_setname_np");
/// gettid(2): the calling thread's kernel id (per-thread nice takes it).
extern int CLinux_gettid(void) __asm__("gettid");

#include <sys/syscall.h>
extern long CLinux_syscall(long number, ...) __asm__("syscall");
/// Drops capability `cap` (e.g. 23, CAP_SYS_NICE) from the calling thread's effective set
/// (capset(2) is per thread): the tests see how the appliance behaves without it. 0 or -1.
static inline int CLinux_dropEffectiveCapability(int cap) {
    struct { unsigned int version; int pid; } header = {0x20080522, 0};  // _LINUX_CAPABILITY_VERSION_3
    struct { unsigned int effective, permitted, inheritable; } data[2];
    if (CLinux_syscall(SYS_capget, &header, data) != 0) return -1;
    data[cap / 32].effective &= ~(1u << (cap % 32));
    return (int)CLinux_syscall(SYS_capset, &header, data);
}
#endif

#endif
