import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A joinable POSIX thread for blocking work (libmodbus calls, server loops): never Swift's
/// cooperative pool.
final class PollerThread: @unchecked Sendable {
    // pthread_t is only used by start (before any other thread sees it) and join.
    private var tid = pthread_t()
    private var started = false

    private final class Body {
        let run: @Sendable () -> Void
        let name: String
        init(_ run: @escaping @Sendable () -> Void, name: String) { self.run = run; self.name = name }
    }

    /// Starts `body` on a new thread; `name` is for error messages.
    init(name: String, _ body: @escaping @Sendable () -> Void) throws(PollerThreadError) {
        // The box is handed to the new thread, which takes ownership and releases it.
        let box = Unmanaged.passRetained(Body(body, name: name)).toOpaque()
        let rc = pthread_create(&tid, nil, { arg in
            let b = Unmanaged<Body>.fromOpaque(arg!).takeRetainedValue()
            b.run()
            return nil
        }, box)
        if rc != 0 {
            Unmanaged<Body>.fromOpaque(box).release()
            throw PollerThreadError(errno: rc, what: name)
        }
        started = true
    }

    /// Waits for the thread to finish.
    func join() {
        guard started else { return }
        started = false
        pthread_join(tid, nil)
    }
}

/// Starting a thread failed.
public struct PollerThreadError: Error, Sendable, Hashable, CustomStringConvertible {
    public var errno: Int32
    public var what: String
    public var description: String { "cannot start thread \(what): errno \(errno)" }
}

/// Sleeps until a monotonic deadline, or until woken: a pthread condition variable on
/// `CLOCK_MONOTONIC` (wall-clock steps do not move the schedule).
final class PollerParker: @unchecked Sendable {
    // The mutex and condition live at fixed heap addresses, as pthread requires; all access
    // goes through pthread calls, which are thread-safe.
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let cond: UnsafeMutablePointer<pthread_cond_t>
    private var signalled = false

    init() {
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
        mutex.deallocate()
        cond.deallocate()
    }

    /// Waits until the monotonic clock reaches `deadlineNs` or `wake()` is called.
    func wait(untilMonotonicNs deadlineNs: Int64) {
        var ts = timespec(tv_sec: Int(deadlineNs / 1_000_000_000), tv_nsec: Int(deadlineNs % 1_000_000_000))
        pthread_mutex_lock(mutex)
        while !signalled {
            if pthread_cond_timedwait(cond, mutex, &ts) == ETIMEDOUT { break }
        }
        signalled = false
        pthread_mutex_unlock(mutex)
    }

    /// Ends the current (or next) wait at once.
    func wake() {
        pthread_mutex_lock(mutex)
        signalled = true
        pthread_cond_broadcast(cond)
        pthread_mutex_unlock(mutex)
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the one monotonic clock helper of the Appliance target
/// (poller schedules, simulator stalls, audit timers).
@inline(__always)
func monotonicNowNs() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
}
