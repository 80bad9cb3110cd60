import Foundation
import Platform
import Synchronization

// Work that must not hold up the lifecycle (issue 17): a reload's parse and validation run on a
// thread of their own, and the reload waits for them at most a time limit, or until its task is
// cancelled (SIGTERM). Work that overruns is abandoned: its thread runs on, its result is
// dropped, and the caller learns that it is still running so it does not start a second one.

/// How bounded work ended.
enum BoundedOutcome<T: Sendable>: Sendable {
    case done(T)
    case timedOut
    case cancelled
    case threadFailed(ThreadStartError)
}

/// One value, handed over once: the first `resolve` wins, later ones are ignored.
final class OneShot<T: Sendable>: Sendable {
    private struct State: @unchecked Sendable {
        var resolved = false
        var early: T?
        var waiter: CheckedContinuation<T, Never>?
    }
    private let state = Mutex(State())

    func resolve(_ value: T) {
        let waiter: CheckedContinuation<T, Never>? = state.withLock { s in
            if s.resolved { return nil }
            s.resolved = true
            if let w = s.waiter {
                s.waiter = nil
                return w
            }
            s.early = value
            return nil
        }
        waiter?.resume(returning: value)
    }

    /// Waits for the value; one waiter only.
    func wait() async -> T {
        await withCheckedContinuation { (c: CheckedContinuation<T, Never>) in
            let ready: T? = state.withLock { s in
                if let v = s.early {
                    s.early = nil
                    return v
                }
                s.waiter = c
                return nil
            }
            if let ready { c.resume(returning: ready) }
        }
    }
}

/// A thread running bounded work; `finished` turns true when the work returns, whether or not
/// anyone still waits for it.
final class BoundedWork: Sendable {
    private let thread = Mutex<OSThread?>(nil)
    private let done = Atomic<Bool>(false)

    var finished: Bool { done.load(ordering: .acquiring) }

    /// Joins the thread once the work has finished (nothing to do otherwise).
    func reap() {
        guard finished else { return }
        thread.withLock { t in
            t?.join()
            t = nil
        }
    }

    /// Runs `work` on a new thread named `name` and waits for it at most `limit`, or until the
    /// calling task is cancelled. On `.timedOut` and `.cancelled` the returned `BoundedWork`
    /// reports when the abandoned work is over.
    static func run<T: Sendable>(name: String, limit: Duration,
                                 _ work: @escaping @Sendable () -> T) async -> (BoundedOutcome<T>, BoundedWork) {
        let shot = OneShot<BoundedOutcome<T>>()
        let handle = BoundedWork()
        let outcome = await withTaskCancellationHandler {
            do throws(ThreadStartError) {
                let t = try OSThread(name: name) {
                    let value = work()
                    handle.done.store(true, ordering: .releasing)
                    shot.resolve(.done(value))
                }
                handle.thread.withLock { $0 = t }
            } catch {
                handle.done.store(true, ordering: .releasing)
                shot.resolve(.threadFailed(error))
            }
            let ms = Int(limit.components.seconds) * 1000 + Int(limit.components.attoseconds / 1_000_000_000_000_000)
            DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(max(0, ms))) { shot.resolve(.timedOut) }
            return await shot.wait()
        } onCancel: {
            shot.resolve(.cancelled)
        }
        if case .done = outcome { handle.reap() }
        return (outcome, handle)
    }
}
