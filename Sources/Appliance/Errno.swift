import Modbus

#if canImport(Glibc)
import Glibc
#endif

/// The symbolic name of an errno value (`ECONNREFUSED`) for file, socket and libmodbus calls;
/// thread-safe, unlike `strerror`.
func errnoText(_ e: Int32) -> String {
    switch e {
    case ENOENT: return "ENOENT"
    case EACCES: return "EACCES"
    case EPERM: return "EPERM"
    case EISDIR: return "EISDIR"
    case EEXIST: return "EEXIST"
    case ENOTDIR: return "ENOTDIR"
    case EADDRINUSE: return "EADDRINUSE"
    case EADDRNOTAVAIL: return "EADDRNOTAVAIL"
    case ENOSPC: return "ENOSPC"
    case EROFS: return "EROFS"
    case EIO: return "EIO"
    case EDQUOT: return "EDQUOT"
    case EFBIG: return "EFBIG"
    case ENOBUFS: return "ENOBUFS"
    case ENFILE: return "ENFILE"
    default: return ModbusError.errnoName(e)
    }
}
