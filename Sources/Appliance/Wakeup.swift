#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A lock with a condition that waits on the monotonic clock (a wall-clock step never stretches
/// or cuts a wait): the guard loop's inbox lock and wake-up.
///
/// Any thread may `withLock`/`signal`; `wait(untilMonotonicNs:)` is for the one consumer thread.
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
        #if canImport(Glibc)
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
        #endif
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

    /// Wakes the waiting thread (call with or without the lock held).
    public func signal() { pthread_cond_signal(cond) }

    /// With the lock held: waits until signalled or until the monotonic clock reaches
    /// `deadlineNs` (spurious wake-ups possible: the caller re-checks its condition).
    public func wait(untilMonotonicNs deadlineNs: Int64) {
        var ts = timespec(tv_sec: Int(deadlineNs / 1_000_000_000), tv_nsec: Int(deadlineNs % 1_000_000_000))
        pthread_cond_timedwait(cond, mutex, &ts)
    }
}
