#if canImport(Glibc)
import Glibc
#endif

/// A multi-producer, single-consumer queue: producers append without ever waiting on the
/// consumer's I/O (one lock, held for an append), the consumer takes everything queued at once
/// (group commit) or sleeps until something arrives or a deadline on the monotonic clock.
///
/// pthread mutex + condition variable (CLOCK_MONOTONIC), because `Synchronization.Mutex` has
/// no condition to sleep on.
final class WaitQueue<Element: Sendable>: @unchecked Sendable {
    // Guarded by `mutex`.
    private var items: [Element] = []
    private var closed = false
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let cond: UnsafeMutablePointer<pthread_cond_t>

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
        cond.deallocate()
        mutex.deallocate()
    }

    enum PushResult { case queued, closed, full }

    /// Appends and wakes the consumer, unless the queue is closed or already holds `limit`
    /// elements (then the element is not taken).
    @discardableResult
    func push(_ e: Element, limit: Int = .max) -> PushResult {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        if closed { return .closed }
        if items.count >= limit { return .full }
        items.append(e)
        pthread_cond_signal(cond)
        return .queued
    }

    /// Refuses further pushes and wakes the consumer.
    func close() {
        pthread_mutex_lock(mutex)
        closed = true
        pthread_cond_broadcast(cond)
        pthread_mutex_unlock(mutex)
    }

    /// Takes up to `max` queued elements; sleeps while none is queued, until `deadlineNs` on
    /// the monotonic clock (nil: no deadline) or `close()`. Returns the batch (possibly empty)
    /// and whether the queue is closed.
    func take(max: Int, deadlineNs: Int64?) -> (batch: [Element], closed: Bool) {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        while items.isEmpty && !closed {
            if let d = deadlineNs {
                var ts = timespec(tv_sec: Int(d / 1_000_000_000), tv_nsec: Int(d % 1_000_000_000))
                if pthread_cond_timedwait(cond, mutex, &ts) == ETIMEDOUT { break }
            } else {
                pthread_cond_wait(cond, mutex)
            }
        }
        if items.count <= max {
            var b: [Element] = []
            swap(&b, &items)  // O(1) under the lock, however long the queue
            return (b, closed)
        }
        let b = Array(items.prefix(max))
        items.removeFirst(max)
        return (b, closed)
    }

    var isClosed: Bool {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return closed
    }

    var count: Int {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return items.count
    }
}
