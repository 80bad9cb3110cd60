/// A multi-producer, single-consumer queue: producers append without ever waiting on the
/// consumer's I/O (one lock, held for an append), the consumer takes everything queued at once
/// (group commit) or sleeps until something arrives or a deadline on the monotonic clock.
package final class WaitQueue<Element: Sendable>: @unchecked Sendable {
    // Guarded by `cond`'s lock.
    private var items: [Element] = []
    private var closed = false
    private let cond = MonotonicCondition()

    package init() {}

    package enum PushResult { case queued, closed, full }

    /// Appends and wakes the consumer, unless the queue is closed or already holds `limit`
    /// elements (then the element is not taken).
    @discardableResult
    package func push(_ e: Element, limit: Int = .max) -> PushResult {
        cond.withLock {
            if closed { return .closed }
            if items.count >= limit { return .full }
            items.append(e)
            cond.signal()
            return .queued
        }
    }

    /// Refuses further pushes and wakes the consumer.
    package func close() {
        cond.withLock {
            closed = true
            cond.broadcast()
        }
    }

    /// Takes up to `max` queued elements; sleeps while none is queued, until `deadlineNs` on
    /// the monotonic clock (nil: no deadline) or `close()`. Returns the batch (possibly empty)
    /// and whether the queue is closed.
    package func take(max: Int, deadlineNs: Int64?) -> (batch: [Element], closed: Bool) {
        cond.withLock {
            while items.isEmpty && !closed {
                if !cond.wait(untilMonotonicNs: deadlineNs) { break }
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
    }

    package var isClosed: Bool { cond.withLock { closed } }

    package var count: Int { cond.withLock { items.count } }
}
