#ifndef TIBET_TWIN_CMODBUS_SHIM_H
#define TIBET_TWIN_CMODBUS_SHIM_H

// The only door to libmodbus. <modbus/modbus.h> works with or without pkg-config's
// include path. What Swift cannot import (function-like and composite macros) is
// re-exported here as static inline functions with a CModbus_ prefix, the way
// swift-nio's CNIOLinux does.

#include <modbus/modbus.h>
#include <sys/select.h>
#include <errno.h>
#include <sys/ioctl.h>
#include <time.h>

// Modbus exception replies arrive as errno MODBUS_ENOBASE + exception code.
static inline int CModbus_ENOBASE(void) { return MODBUS_ENOBASE; }
static inline int CModbus_EMBXILFUN(void) { return EMBXILFUN; }
static inline int CModbus_EMBXILADD(void) { return EMBXILADD; }
static inline int CModbus_EMBXILVAL(void) { return EMBXILVAL; }
static inline int CModbus_EMBXSFAIL(void) { return EMBXSFAIL; }
static inline int CModbus_EMBXACK(void) { return EMBXACK; }
static inline int CModbus_EMBXSBUSY(void) { return EMBXSBUSY; }
static inline int CModbus_EMBXNACK(void) { return EMBXNACK; }
static inline int CModbus_EMBXMEMPAR(void) { return EMBXMEMPAR; }
static inline int CModbus_EMBXGPATH(void) { return EMBXGPATH; }
static inline int CModbus_EMBXGTAR(void) { return EMBXGTAR; }
static inline int CModbus_EMBBADCRC(void) { return EMBBADCRC; }
static inline int CModbus_EMBBADDATA(void) { return EMBBADDATA; }
static inline int CModbus_EMBBADEXC(void) { return EMBBADEXC; }
static inline int CModbus_EMBUNKEXC(void) { return EMBUNKEXC; }
static inline int CModbus_EMBMDATA(void) { return EMBMDATA; }
static inline int CModbus_EMBBADSLAVE(void) { return EMBBADSLAVE; }

// fd_set helpers: FD_ZERO/FD_SET/FD_CLR/FD_ISSET are macros Swift does not import. They stay
// here, not in CLinux: FD_SETSIZE is the limit of the select() inside libmodbus (a descriptor
// at or above it aborts the process), which ModbusClient guards against.
static inline void CModbus_FD_ZERO(fd_set *set) { FD_ZERO(set); }
static inline void CModbus_FD_SET(int fd, fd_set *set) { FD_SET(fd, set); }
static inline void CModbus_FD_CLR(int fd, fd_set *set) { FD_CLR(fd, set); }
static inline int CModbus_FD_ISSET(int fd, fd_set *set) { return FD_ISSET(fd, set); }
static inline int CModbus_FD_SETSIZE(void) { return FD_SETSIZE; }

// The modem-control bits of a serial device (TIOCMGET): whether RTS can be driven at all.
// libmodbus's own RTS switching ignores a failing ioctl, so a port without modem control (a
// pseudo-terminal) would silently never switch; this lets the caller refuse it up front.
// ioctl is variadic, which Swift cannot call.
static inline int CModbus_get_modem_bits(int fd, int *bits) { return ioctl(fd, TIOCMGET, bits); }

#endif
