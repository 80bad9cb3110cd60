import CLinux

#if canImport(Glibc)
import Glibc
#endif

/// A joinable POSIX thread for blocking work (libmodbus calls, server loops, the audit
/// writer): never Swift's cooperative pool.
package final class OSThread: @unchecked Sendable {
    // pthread_t is only used by start (before any other thread sees it) and join.
    private var tid = pthread_t()
    private var started = false

    private final class Body {
        let run: @Sendable () -> Void
        let name: String
        init(_ run: @escaping @Sendable () -> Void, name: String) { self.run = run; self.name = name }
    }

    /// Starts `body` on a new thread named `name` (as `top -H` and debuggers show it; the first
    /// 15 bytes), which also names it in error messages.
    package init(name: String, _ body: @escaping @Sendable () -> Void) throws(ThreadStartError) {
        // The box is handed to the new thread, which takes ownership and releases it.
        let box = Unmanaged.passRetained(Body(body, name: name)).toOpaque()
        let rc = pthread_create(&tid, nil, { arg in
            let b = Unmanaged<Body>.fromOpaque(arg!).takeRetainedValue()
            _ = CLinux_pthread_setname_np(UInt(pthread_self()), String(decoding: b.name.utf8.prefix(15), as: UTF8.self))
            b.run()
            return nil
        }, box)
        if rc != 0 {
            Unmanaged<Body>.fromOpaque(box).release()
            throw ThreadStartError(errno: Errno(rc), what: name)
        }
        started = true
    }

    /// Waits for the thread to finish. Called on that thread itself (an owner released from
    /// its own thread), it detaches instead: the thread's resources go when it ends.
    package func join() {
        guard started else { return }
        started = false
        if pthread_equal(tid, pthread_self()) != 0 {
            pthread_detach(tid)
        } else {
            pthread_join(tid, nil)
        }
    }
}

extension OSThread {
    /// Lowers the calling thread's scheduling priority by `steps` nice levels (Linux nice
    /// is per thread). Lowering needs no privilege; it cannot fail in a way that matters, so a
    /// refusal is returned, not thrown. Bulk work (polling) yields to the safety path (the
    /// guard loop, the interlock server) when both are runnable on a busy machine.
    @discardableResult
    package static func lowerCurrentPriority(by steps: Int32) -> Errno? {
        adjustCurrentPriority { now in min(now + steps, 19) }
    }

    /// Sets the calling thread's nice value to `nice` if that is higher priority than it has
    /// (a lower value). Needs `CAP_SYS_NICE` or an `RLIMIT_NICE` that allows it (systemd's
    /// `LimitNICE=`); the refusal (`EACCES`, `EPERM`) is returned, not thrown, and the thread
    /// keeps its priority.
    @discardableResult
    package static func raiseCurrentPriority(to nice: Int32) -> Errno? {
        adjustCurrentPriority { now in min(now, nice) }
    }

    /// Puts the calling thread under `SCHED_FIFO` at `priority` (1–99): it runs as soon as it
    /// is runnable, ahead of every normally scheduled thread on any core, until it blocks or a
    /// thread of higher real-time priority wants the core. `SCHED_RESET_ON_FORK`: a child
    /// process starts normally scheduled. Needs `CAP_SYS_NICE` or an `RLIMIT_RTPRIO` of at
    /// least `priority` (systemd's `LimitRTPRIO=`); the refusal is returned, not thrown, and
    /// the thread keeps its scheduling. Only for threads that block between short bursts of
    /// work: the kernel's real-time throttling (95 % of each second) is the only bound on one
    /// that does not.
    @discardableResult
    package static func makeCurrentRealtime(priority: Int32) -> Errno? {
        var param = sched_param()
        param.sched_priority = priority
        // SCHED_RESET_ON_FORK is only declared under _GNU_SOURCE.
        let resetOnFork: Int32 = 0x4000_0000
        return sched_setscheduler(0, Int32(SCHED_FIFO) | resetOnFork, &param) == 0 ? nil : Errno(errno)
    }

    /// The calling thread's nice value, or the refusal to read it.
    package static func currentNice() -> Int32? {
        errno = 0
        let now = getpriority(__priority_which_t(PRIO_PROCESS.rawValue), id_t(CLinux_gettid()))
        return now == -1 && errno != 0 ? nil : now
    }

    private static func adjustCurrentPriority(_ target: (Int32) -> Int32) -> Errno? {
        let tid = id_t(CLinux_gettid())
        errno = 0
        let now = getpriority(__priority_which_t(PRIO_PROCESS.rawValue), tid)
        if now == -1 && errno != 0 { return Errno(errno) }
        let wanted = target(now)
        if wanted == now { return nil }
        if setpriority(__priority_which_t(PRIO_PROCESS.rawValue), tid, wanted) != 0 { return Errno(errno) }
        return nil
    }
}

/// Starting a thread failed.
public struct ThreadStartError: Error, Sendable, Hashable, CustomStringConvertible {
    public var errno: Errno
    public var what: String
    public var description: String { "cannot start thread \(what): \(errno)" }
}

/// A pthread mutex with a condition that waits on `CLOCK_MONOTONIC` (a wall-clock step never
/// stretches or cuts a wait). The one such wrapper: the guard loop's inbox, the poller's
/// schedule and the audit queue are built on it.
///
/// Any thread may `withLock`/`signal`; waits are for the consumer thread.
public final class MonotonicCondition: @unchecked Sendable {
    // Heap-allocated so their addresses never move (pthread objects must not be copied).
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let cond: UnsafeMutablePointer<pthread_cond_t>

    public init() {
        mutex = .allocate(capacity: 1)
        cond = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        var attr = pthread_condattr_t()
        pthread_condattr_init(&attr)
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
        pthread_cond_init(cond, &attr)
        pthread_condattr_destroy(&attr)
    }

    deinit {
        pthread_cond_destroy(cond)
        pthread_mutex_destroy(mutex)
        cond.deallocate()
        mutex.deallocate()
    }

    /// Runs `body` with the lock held.
    @inlinable
    public func withLock<R>(_ body: () throws -> R) rethrows -> R {
        lock()
        defer { unlock() }
        return try body()
    }

    @usableFromInline func lock() { pthread_mutex_lock(mutex) }
    @usableFromInline func unlock() { pthread_mutex_unlock(mutex) }

    /// Wakes one waiting thread (call with or without the lock held).
    public func signal() { pthread_cond_signal(cond) }

    /// Wakes every waiting thread.
    public func broadcast() { pthread_cond_broadcast(cond) }

    /// With the lock held: waits until signalled or until the monotonic clock reaches
    /// `deadlineNs` (nil: no deadline). Returns false when the deadline passed. Spurious
    /// wake-ups are possible: the caller re-checks its condition.
    @discardableResult
    public func wait(untilMonotonicNs deadlineNs: Int64?) -> Bool {
        guard let deadlineNs else {
            pthread_cond_wait(cond, mutex)
            return true
        }
        var ts = timespec(tv_sec: Int(deadlineNs / 1_000_000_000), tv_nsec: Int(deadlineNs % 1_000_000_000))
        return pthread_cond_timedwait(cond, mutex, &ts) != ETIMEDOUT
    }
}

/// Sleeps until a monotonic deadline or until woken (a wake before the wait ends the next wait).
public final class Parker: @unchecked Sendable {
    private let cond = MonotonicCondition()
    // Guarded by `cond`'s lock.
    private var signalled = false

    public init() {}

    /// Waits until the monotonic clock reaches `deadlineNs` or `wake()` is called.
    public func wait(untilMonotonicNs deadlineNs: Int64) {
        cond.withLock {
            while !signalled {
                if !cond.wait(untilMonotonicNs: deadlineNs) { break }
            }
            signalled = false
        }
    }

    /// Ends the current (or next) wait at once.
    public func wake() {
        cond.withLock {
            signalled = true
            cond.broadcast()
        }
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the one monotonic clock helper below the core's
/// `TimeSource` (poller schedules, simulator stalls, audit timers, log limits).
@inline(__always)
public func monotonicNowNs() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
}
