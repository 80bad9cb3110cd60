import Platform

#if canImport(Glibc)
import Glibc
#endif

/// glibc malloc settings for the long-running appliance.
package enum MallocTuning {
    /// The arenas `tibet-twin run` allows unless `MALLOC_ARENA_MAX` says otherwise.
    package static let arenaMax: Int32 = 2
    /// `M_ARENA_MAX` from glibc's `<malloc.h>` (not exported by Swift's Glibc module).
    static let mArenaMax: Int32 = -8

    /// Caps glibc's malloc arenas at `arenaMax` (default: 8 per core, one per thread here: the
    /// appliance runs ~16 threads). Each arena keeps the memory freed into it, so a burst that
    /// one thread allocates (an audit backlog under overload) stays resident per arena long
    /// after it is freed; fewer arenas share and reuse that memory. Call it first thing, before
    /// other threads start. An explicit `MALLOC_ARENA_MAX` in the environment wins. Returns
    /// whether the cap was set here. The corresponding C function is `mallopt`.
    @discardableResult
    package static func limitArenas() -> Bool {
        #if canImport(Glibc)
        guard getenv("MALLOC_ARENA_MAX") == nil,
              let sym = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "mallopt") else { return false }  // RTLD_DEFAULT
        typealias Mallopt = @convention(c) (Int32, Int32) -> Int32
        return unsafeBitCast(sym, to: Mallopt.self)(mArenaMax, arenaMax) == 1
        #else
        return false
        #endif
    }

    /// Returns free memory at the top and inside glibc's arenas to the system (after a burst
    /// has drained). Returns whether memory was released. The corresponding C function is
    /// `malloc_trim`.
    @discardableResult
    package static func trim() -> Bool {
        #if canImport(Glibc)
        guard let sym = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "malloc_trim") else { return false }  // RTLD_DEFAULT
        typealias MallocTrim = @convention(c) (Int) -> Int32
        return unsafeBitCast(sym, to: MallocTrim.self)(0) == 1
        #else
        return false
        #endif
    }
}
