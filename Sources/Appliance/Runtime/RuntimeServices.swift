import Foundation
import Logging
import Modbus
import Platform
import ServiceLifecycle
import Synchronization
import TibetTwin
import UnixSignals

// The services of `run`'s ServiceGroup and the small pieces the wiring hands between them.

/// What the HTTP API asks of the running appliance; the guard loop may not exist yet when the
/// HTTP server is bound, so it is looked up per request.
final class RuntimeControl: ApplianceControl {
    let guardBox: LateBox<GuardLoop>
    let metrics: ApplianceMetrics

    init(guardBox: LateBox<GuardLoop>, metrics: ApplianceMetrics) {
        self.guardBox = guardBox
        self.metrics = metrics
    }

    func status(_ done: @escaping @Sendable (StatusSnapshot?) -> Void) {
        guard let g = guardBox.value else { return done(nil) }
        // If the guard loop is hung, answer 503 after 2 s rather than hold the request forever.
        let once = OnceFlag()
        g.status { snap in if once.claim() { done(snap) } }
        DispatchQueue.global().asyncAfter(deadline: .now() + 2) { if once.claim() { done(nil) } }
    }

    func reset(device: String, intent: String?, client: String, _ done: @escaping @Sendable (ResetOutcome) -> Void) {
        guard let g = guardBox.value else { return done(.auditFailed("not started")) }
        g.reset(device: device, intent: intent, client: client, done: done)
    }

    func metricsText(status: StatusSnapshot?) -> [UInt8] { metrics.render(status: status) }

    func health() -> HealthSnapshot {
        guardBox.value?.health()
            ?? HealthSnapshot(guardAlive: false, auditHealthy: false, ready: false, heartbeat: 0, sinceTickMs: .infinity)
    }
}

/// The poller's sink into the guard loop, with a door that can be shut per device: on a reload
/// the old poller keeps running until the new one polls, but its states of replaced devices
/// must not reach the replaced device's new guard. Each poller gets the next generation; the
/// guard loop checks a state's generation under its inbox lock (`GuardLoop.shutOutPhysical`),
/// so no state slips through after `shutOut` returns, and the poll threads share no other lock.
final class PollerGate: Sendable {
    let guardLoop: GuardLoop
    let generation: UInt64

    init(guardLoop: GuardLoop, generation: UInt64 = 1) {
        self.guardLoop = guardLoop
        self.generation = generation
    }

    /// The gate of the poller that replaces this one's.
    func next() -> PollerGate { PollerGate(guardLoop: guardLoop, generation: generation + 1) }

    func submit(_ state: PhysicalState, news: Bool = true) {
        guardLoop.submit(physical: state, generation: generation, wake: news)
    }

    /// No more states of `devices` from this poller (or older ones).
    func shutOut(_ devices: [String]) {
        guardLoop.shutOutPhysical(devices, olderThan: generation + 1)
    }
}

/// A reference filled in once, after the objects that read it were made.
final class LateBox<T: Sendable>: Sendable {
    private let stored = Mutex<T?>(nil)
    var value: T? { stored.withLock { $0 } }
    func set(_ v: T) { stored.withLock { $0 = v } }
}

/// True for the first caller only.
final class OnceFlag: Sendable {
    private let done = Atomic<Bool>(false)
    func claim() -> Bool { !done.exchange(true, ordering: .acquiringAndReleasing) }
}

// MARK: - The services of the group, in start order (shutdown runs in reverse)

/// First up (opened in `start`), last down: closes the chain with a `stopped` token.
struct AuditCloser: Service {
    let runtime: ApplianceRuntime
    func run() async throws {
        try? await gracefulShutdown()
        runtime.audit.close(reason: "shutdown")
        runtime.logger.info("audit chain closed")
    }
}

/// The guard loop and the poller: stops them on shutdown; reloads on SIGHUP; flushes the
/// interlock auditor's folded counts every second.
struct GuardService: Service {
    let runtime: ApplianceRuntime
    let handleHUP: Bool

    func run() async throws {
        await withTaskGroup(of: Void.self) { group in
            if handleHUP {
                group.addTask {
                    for await _ in await UnixSignalsSequence(trapping: .sighup).cancelOnGracefulShutdown() {
                        runtime.logger.notice("SIGHUP: reloading \(runtime.configPath)")
                        await runtime.reload()
                    }
                }
            }
            group.addTask {
                while !Task.isCancelled && !Task.isShuttingDownGracefully {
                    try? await Task.sleep(for: .seconds(1))
                    runtime.auditor.flush()
                }
            }
            try? await gracefulShutdown()
            group.cancelAll()
        }
        runtime.state.withLock { $0.poller }.stop()
        runtime.guardLoop.stop()
        runtime.auditor.flush()
        runtime.logger.info("guard stopped")
    }
}

/// Stops the twin sources (started in `ApplianceRuntime.start`).
struct TwinStopper: Service {
    let twin: TwinFeedService
    func run() async throws {
        try? await gracefulShutdown()
        for s in twin.sources.reversed() { await s.stop() }
    }
}

/// Stops the permit publisher before the interlock's grace period: it publishes every permit 0
/// (what the interlock serves from now on) and the Sparkplug NDEATH, and disconnects.
struct PublisherStopper: Service {
    let publisher: PermitPublisher?
    func run() async throws {
        try? await gracefulShutdown()
        publisher?.stop()
    }
}

/// Closes the HTTP API.
struct HTTPStopper: Service {
    let http: HTTPServer
    func run() async throws {
        try? await gracefulShutdown()
        await http.stop()
    }
}

/// Last in the list, so first to hear of the shutdown: logs it and tells systemd, before the
/// interlock (next) drops every permit and serves zeros for the grace period.
struct StopNotifier: Service {
    let notifier: SystemdNotifier
    let logger: Logger
    func run() async throws {
        try? await gracefulShutdown()
        logger.notice("stopping: permits drop to 0 now")
        try? notifier.stopping(status: "stopping: permits 0")
    }
}
