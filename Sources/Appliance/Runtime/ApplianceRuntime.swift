import Foundation
import Logging
import Modbus
import Platform
import ServiceLifecycle
import Synchronization
import TibetTwin
import UnixSignals

/// The running appliance (`tibet-twin run`): every part wired together, DESIGN.md's one-way flow.
///
/// ```
/// poller ──PhysicalState──┐
/// twin feeds ──TwinState──┼──► GuardLoop ──PermitTable──► InterlockServer ──► PLCs
/// HTTP reset/status ──────┘       └──► AuditStore (rises wait for its durable ack)
/// ```
///
/// `start` does everything that can fail before anything is served — config and maps validated,
/// listeners bound, the audit chain opened (`started` token) — and throws one line per problem
/// otherwise, closing whatever it had opened. `run` then serves until SIGTERM/SIGINT (or
/// `shutdown()`), as a swift-service-lifecycle `ServiceGroup` whose reverse-order graceful
/// shutdown is the safe stop: HTTP closes, the interlock serves every permit as 0 for
/// `stop_grace_ms` and closes, the feeds and the poller stop, the guard loop stops, and the
/// audit chain is closed last with a `stopped` token. SIGHUP reloads (`reload()`).
package final class ApplianceRuntime: Sendable {
    package let configPath: String
    package let audit: AuditStore
    package let guardLoop: GuardLoop
    package let interlock: InterlockServer
    package let http: HTTPServer
    package let twin: TwinFeedService
    package let metrics: ApplianceMetrics
    package let auditor: InterlockAuditor
    let notifier: SystemdNotifier
    let logger: Logger
    let clock: any TimeSource
    let state: Mutex<State>
    let group = Mutex<ServiceGroup?>(nil)

    struct State: @unchecked Sendable {
        var loaded: LoadedConfig
        var poller: Poller
        /// Between the poller and the guard loop: shuts out the states of replaced devices.
        var gate: PollerGate
        /// Counters of pollers retired by reloads, so metrics keep counting up.
        var retiredPolls = PollerStats()
        var reloading = false
    }

    /// The ports actually bound (differ from the config where it says port 0).
    package struct Ports: Sendable, Hashable {
        package var interlock: Int
        package var http: Int
        /// Bound ports of the TCP twin feeds, in config order.
        package var twinTCP: [Int]
    }

    package var ports: Ports {
        Ports(interlock: interlock.port, http: http.port ?? 0,
              twinTCP: twin.sources.compactMap { ($0 as? TwinSocketSource)?.localPort })
    }

    /// The config in force.
    package var loaded: LoadedConfig { state.withLock { $0.loaded } }

    private init(configPath: String, loaded: LoadedConfig, audit: AuditStore, guardLoop: GuardLoop,
                 interlock: InterlockServer, http: HTTPServer, twin: TwinFeedService, poller: Poller,
                 gate: PollerGate, metrics: ApplianceMetrics, auditor: InterlockAuditor, notifier: SystemdNotifier,
                 logger: Logger, clock: any TimeSource) {
        self.configPath = configPath
        self.audit = audit
        self.guardLoop = guardLoop
        self.interlock = interlock
        self.http = http
        self.twin = twin
        self.metrics = metrics
        self.auditor = auditor
        self.notifier = notifier
        self.logger = logger
        self.clock = clock
        self.state = Mutex(State(loaded: loaded, poller: poller, gate: gate))
    }

    /// Validates, binds and opens everything, then starts the guard loop, the poller and the
    /// interlock server (serving all permits 0 until the first evaluation is published).
    /// Nothing is served if this throws.
    package static func start(configPath: String, notifier: SystemdNotifier = SystemdNotifier(),
                             logger: Logger = Logger(label: "tibet-twin"),
                             clock: any TimeSource = SystemTimeSource()) async throws(StartupError) -> ApplianceRuntime {
        let loaded = try LoadedConfig.load(configPath: configPath)
        let config = loaded.config
        do {
            try DescriptorLimit.capForSelect()
        } catch {
            throw StartupError("descriptor limit: \(error)")
        }
        let metrics = ApplianceMetrics()

        // The audit store is opened after the listeners are bound (a taken port must not leave a
        // started/stopped pair in the chain), but the interlock reports events from the start:
        // they go through a box filled once the store is open.
        let auditBox = LateBox<InterlockAuditor>()
        let interlock: InterlockServer
        do {
            interlock = try InterlockServer(config: loaded.interlockConfig, layout: loaded.layout,
                                            logger: Logger(label: "tibet-twin.interlock")) { event in
                auditBox.value?.record(event)
            }
        } catch {
            throw StartupError("\(config.sourceFile): interlock.listen \(config.interlock.listen): \(error)")
        }
        let controlBox = LateBox<GuardLoop>()
        let control = RuntimeControl(guardBox: controlBox, metrics: metrics)
        let http = HTTPServer(host: config.http.listen.host, port: config.http.listen.port,
                              handler: HTTPAPI(control: control).handler)
        do {
            try await http.start()
        } catch {
            interlock.stopImmediately()
            throw StartupError("\(config.sourceFile): \(error)")
        }

        let audit: AuditStore
        do {
            audit = try AuditStore.open(AuditStore.Configuration(
                directory: config.audit.dir, keyPath: config.audit.key, node: config.node,
                segmentBytes: config.audit.segmentBytes))
        } catch {
            interlock.stopImmediately()
            await http.stop()
            throw StartupError("\(config.sourceFile): audit: \(error)")
        }
        audit.reserveBacklog(forIntents: loaded.maps.reduce(0) { $0 + $1.intents.count })
        let auditor = InterlockAuditor(audit: audit, node: config.node, clock: clock)
        auditBox.set(auditor)

        let guardLoop = GuardLoop(
            configuration: GuardLoop.Configuration(node: config.node, checkpointS: config.audit.checkpointS),
            maps: loaded.maps, layout: loaded.layout, audit: audit, metrics: metrics, notifier: notifier,
            clock: clock, logger: Logger(label: "tibet-twin.guard")) { [interlock] table in
            interlock.publish(table)
        }
        controlBox.set(guardLoop)

        let pipeline = TwinFeedPipeline(parser: loaded.parser) { [guardLoop] state in
            guardLoop.submit(twin: state)
        }
        let twin = TwinFeedService(feeds: loaded.config.twin.feeds, pipeline: pipeline, logger: Logger(label: "tibet-twin.twin"))
        var started: [any TwinSource] = []
        for source in twin.sources {
            do {
                try await source.start()
                started.append(source)
            } catch {
                for s in started.reversed() { await s.stop() }
                interlock.stopImmediately()
                await http.stop()
                audit.close(reason: "start failed: twin feed \(source.name): \(error)")
                throw StartupError("\(config.sourceFile): twin.feeds \(source.name): \(error)")
            }
        }

        let gate = PollerGate(guardLoop: guardLoop)
        let poller = Poller(maps: loaded.maps) { [gate] state in gate.submit(state) }
        let runtime = ApplianceRuntime(configPath: configPath, loaded: loaded, audit: audit, guardLoop: guardLoop,
                                       interlock: interlock, http: http, twin: twin, poller: poller, gate: gate, metrics: metrics,
                                       auditor: auditor, notifier: notifier, logger: logger, clock: clock)
        do {
            try guardLoop.start()
            try poller.start()
            try interlock.start()
        } catch {
            guardLoop.stop()
            poller.stop()
            for s in started.reversed() { await s.stop() }
            interlock.stopImmediately()
            await http.stop()
            audit.close(reason: "start failed: \(error)")
            throw StartupError("start: \(error)")
        }
        runtime.registerMetrics()
        audit.submit(AuditRecord(action: .configLoaded, erin: .object([
            "accepted": .bool(true), "reason": .string("start"), "config": loaded.auditJSON,
        ]), erachter: .object(["why": .string("the config and maps the guard judges by from now on")]),
            time: clock.now()), onDurable: nil)
        logger.info("started", metadata: [
            "node": "\(config.node)", "devices": "\(loaded.maps.count)",
            "interlock": "\(interlock.address)", "http": "\(config.http.listen.host):\(http.port ?? 0)",
            "audit": "\(config.audit.dir)",
        ])
        return runtime
    }

    // MARK: Running

    /// Serves until SIGTERM/SIGINT or `shutdown()`, then stops safely (see the type's doc).
    /// SIGHUP reloads while it runs.
    package func run(handleSignals: Bool = true) async throws {
        let services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(service: AuditCloser(runtime: self), serviceName: "audit"),
            .init(service: GuardService(runtime: self, handleHUP: handleSignals), serviceName: "guard"),
            .init(service: TwinStopper(twin: twin), serviceName: "twin"),
            .init(service: HTTPStopper(http: http), serviceName: "http"),
            .init(service: interlock, serviceName: "interlock"),
            .init(service: StopNotifier(notifier: notifier, logger: logger), serviceName: "notify"),
        ]
        var config = ServiceGroupConfiguration(
            services: services,
            gracefulShutdownSignals: handleSignals ? [.sigterm, .sigint] : [],
            logger: Logger(label: "tibet-twin.lifecycle"))
        config.maximumGracefulShutdownDuration = .seconds(Double(loaded.config.interlock.stopGraceMs) / 1000 + 10)
        let group = ServiceGroup(configuration: config)
        self.group.withLock { $0 = group }
        try await group.run()
    }

    /// Begins the safe stop (as SIGTERM does); `run()` returns when it is done.
    package func shutdown() async {
        if let g = group.withLock({ $0 }) { await g.triggerGracefulShutdown() }
    }

    // MARK: Reload

    /// The result of a reload, for logs and tests.
    package enum ReloadOutcome: Sendable, Hashable {
        case applied(GuardReloadResult, restartOnly: [String])
        case refused([String])
        case busy
    }

    /// SIGHUP: reads and validates the config and every map again. Invalid: the running set
    /// stays; the refusal is logged and audited. Valid: unchanged devices keep their state and
    /// permits, replaced and new devices start blocked and re-arm (the guard drops their permits
    /// in the same step), and the poller restarts with the new maps.
    @discardableResult
    package func reload() async -> ReloadOutcome {
        let (old, wasBusy) = state.withLock { s -> (LoadedConfig, Bool) in
            defer { s.reloading = true }
            return (s.loaded, s.reloading)
        }
        if wasBusy { return .busy }
        defer { state.withLock { $0.reloading = false } }
        try? notifier.reloading()
        let now = clock.now()
        let next: LoadedConfig
        do {
            next = try LoadedConfig.load(configPath: configPath)
        } catch {
            for line in error.lines { logger.error("reload refused: \(line)") }
            metrics.countReload(ok: false)
            audit.submit(AuditRecord(action: .configLoaded, erin: .object([
                "accepted": .bool(false), "reason": .string("reload"), "errors": .array(error.lines.map { .string($0) }),
                "config_file": .string(configPath),
            ]), erachter: .object(["why": .string("SIGHUP: the new config or maps are invalid; the running set stays")]),
                time: now), onDurable: nil)
            try? notifier.ready(status: "reload refused: \(error.lines.first ?? "")")
            return .refused(error.lines)
        }
        let restartOnly = next.restartOnlyChanges(from: old)
        audit.reserveBacklog(forIntents: next.maps.reduce(0) { $0 + $1.intents.count })
        // From here on the running poller's states of devices whose map changes (or goes) never
        // reach the guard: the new slot of a replaced device sees only states read by its new map.
        let nextByName = Dictionary(next.maps.map { ($0.device, $0) }, uniquingKeysWith: { a, _ in a })
        let leaving = old.maps.filter { nextByName[$0.device] != $0 }.map(\.device)
        let (oldPoller, oldGate) = state.withLock { ($0.poller, $0.gate) }
        oldGate.shutOut(leaving)
        let result: GuardReloadResult = await withCheckedContinuation { c in
            guardLoop.reload(GuardReload(maps: next.maps, layout: next.layout)) { c.resume(returning: $0) }
        }
        twin.pipeline.replace(parser: next.parser, forgetting: result.replaced + result.removed)
        if !result.restarted.isEmpty || !result.removed.isEmpty {
            // The new poller starts before the old one stops: an unchanged device is polled by
            // both for a moment, never by neither (its state must not go stale over a reload).
            let gate = PollerGate(guardLoop: guardLoop)
            let newPoller = Poller(maps: next.maps) { [gate] s in gate.submit(s) }
            do {
                try newPoller.start()
            } catch {
                logger.critical("reload: the poller did not start again: \(error); devices will block with NO_PHYSICAL/PHYSICAL_STALE")
            }
            oldPoller.stop()
            let retired = oldPoller.stats()
            state.withLock { s in
                s.poller = newPoller
                s.gate = gate
                s.retiredPolls.devices += retired.devices
                s.retiredPolls.latency.merge(retired.latency)
            }
        }
        state.withLock { $0.loaded = next }
        metrics.countReload(ok: true)
        var erin: [String: JSONValue] = [
            "accepted": .bool(true), "reason": .string("reload"), "config": next.auditJSON,
            "kept": .array(result.kept.map { .string($0) }), "replaced": .array(result.replaced.map { .string($0) }),
            "added": .array(result.added.map { .string($0) }), "removed": .array(result.removed.map { .string($0) }),
        ]
        if !restartOnly.isEmpty { erin["needs_restart"] = .array(restartOnly.map { .string($0) }) }
        audit.submit(AuditRecord(action: .configLoaded, erin: .object(erin), erachter: .object([
            "why": .string("SIGHUP: new maps; replaced and added devices restart blocked and re-arm"),
        ]), time: now), onDurable: nil)
        logger.notice("reload applied", metadata: [
            "kept": "\(result.kept)", "replaced": "\(result.replaced)", "added": "\(result.added)",
            "removed": "\(result.removed)",
        ])
        if !restartOnly.isEmpty {
            logger.warning("reload: changes to \(restartOnly.joined(separator: ", ")) take effect at the next restart")
        }
        try? notifier.ready(status: "reloaded: \(next.maps.count) devices")
        return .applied(result, restartOnly: restartOnly)
    }

    // MARK: Metrics

    private func registerMetrics() {
        metrics.addSource { [weak self] in self?.pollerSamples() ?? [] }
        metrics.addSource { [twin] in Self.twinSamples(twin.counters) }
        metrics.addSource { [interlock] in Self.interlockSamples(interlock.counters()) }
        metrics.addSource { [audit] in Self.auditSamples(audit.stats) }
    }

    private func pollerSamples() -> [MetricSample] {
        let (live, retired) = state.withLock { ($0.poller, $0.retiredPolls) }
        let now = live.stats()
        var latency = retired.latency
        latency.merge(now.latency)
        var samples: [MetricSample] = [
            .counter(name: "tibet_twin_polls_total", help: "Polls of every device", labels: [],
                     total: UInt64(retired.polls + now.polls)),
            .counter(name: "tibet_twin_polls_good_total", help: "Polls that read every register", labels: [],
                     total: UInt64(retired.goodPolls + now.goodPolls)),
            .counter(name: "tibet_twin_poll_missed_slots_total", help: "Poll slots skipped because a poll ran late",
                     labels: [], total: UInt64(retired.missedSlots + now.missedSlots)),
        ]
        var errors = retired.errors
        for (k, v) in now.errors { errors[k, default: 0] += v }
        for kind in PollErrorKind.allCases {
            samples.append(.counter(name: "tibet_twin_poll_errors_total", help: "Failed polls, by kind",
                                    labels: [("kind", kind.rawValue)], total: UInt64(errors[kind] ?? 0)))
        }
        samples.append(.gauge(name: "tibet_twin_plcs_connected", help: "PLC connections open", labels: [],
                              value: Double(now.devices.filter(\.connected).count)))
        var cumulative: [UInt64] = []
        var running = 0
        for c in latency.counts.dropLast() {
            running += c
            cumulative.append(UInt64(running))
        }
        samples.append(.histogram(name: "tibet_twin_poll_latency_seconds", help: "Poll duration, request to last answer",
                                  labels: [], bounds: PollLatencyHistogram.boundsUs.map { Double($0) / 1e6 },
                                  counts: cumulative, sum: Double(latency.sumNs) / 1e9, count: UInt64(latency.count)))
        return samples
    }

    static func twinSamples(_ counters: [TwinFeedCounters]) -> [MetricSample] {
        var out: [MetricSample] = []
        for c in counters {
            out.append(.counter(name: "tibet_twin_twin_lines_accepted_total", help: "Twin feed lines accepted",
                                labels: [("source", c.source)], total: c.accepted))
            for reason in TwinDropReason.allCases {
                out.append(.counter(name: "tibet_twin_twin_lines_dropped_total", help: "Twin feed lines dropped, by reason",
                                    labels: [("source", c.source), ("reason", reason.rawValue)], total: c.dropped[reason] ?? 0))
            }
            out.append(.gauge(name: "tibet_twin_twin_clients", help: "Twin feed clients connected",
                              labels: [("source", c.source)], value: Double(c.clientsConnected)))
        }
        return out
    }

    static func interlockSamples(_ c: ModbusServerCounters) -> [MetricSample] {
        let help = "Interlock requests answered with an exception, by code"
        return [
            .counter(name: "tibet_twin_interlock_requests_total", help: "Interlock requests received", labels: [], total: c.requests),
            .counter(name: "tibet_twin_interlock_exceptions_total", help: help, labels: [("code", "1")], total: c.exceptionIllegalFunction),
            .counter(name: "tibet_twin_interlock_exceptions_total", help: help, labels: [("code", "2")], total: c.exceptionIllegalAddress),
            .counter(name: "tibet_twin_interlock_exceptions_total", help: help, labels: [("code", "3")], total: c.exceptionIllegalValue),
            .counter(name: "tibet_twin_interlock_exceptions_total", help: help, labels: [("code", "11")], total: c.exceptionGatewayTarget),
            .counter(name: "tibet_twin_interlock_writes_rejected_total", help: "Write requests refused (read-only)", labels: [],
                     total: c.writesRejected),
            .counter(name: "tibet_twin_interlock_refused_total", help: "Connections refused at accept, by reason",
                     labels: [("reason", "not_allowed")], total: c.refusedNotAllowed),
            .counter(name: "tibet_twin_interlock_refused_total", help: "Connections refused at accept, by reason",
                     labels: [("reason", "too_many_clients")], total: c.refusedTooManyClients),
            .counter(name: "tibet_twin_interlock_refused_total", help: "Connections refused at accept, by reason",
                     labels: [("reason", "descriptor_limit")], total: c.refusedDescriptorLimit),
            .counter(name: "tibet_twin_interlock_closed_malformed_total", help: "Connections closed for malformed frames",
                     labels: [], total: c.closedMalformed),
            .gauge(name: "tibet_twin_interlock_clients", help: "Interlock clients connected", labels: [], value: Double(c.clients)),
        ]
    }

    static func auditSamples(_ s: AuditStats) -> [MetricSample] {
        [
            .counter(name: "tibet_twin_audit_tokens_total", help: "Audit tokens made durable", labels: [], total: s.tokensWritten),
            .counter(name: "tibet_twin_audit_fsyncs_total", help: "Group commits (one write and one fdatasync each)",
                     labels: [], total: s.batches),
            .counter(name: "tibet_twin_audit_fsync_seconds_total", help: "Time spent in fdatasync",
                     labels: [], total: UInt64(max(s.totalSyncNs, 0))),
            .gauge(name: "tibet_twin_audit_fsync_last_seconds", help: "Duration of the last fdatasync", labels: [],
                   value: Double(s.lastSyncNs) / 1e9),
            .gauge(name: "tibet_twin_audit_fsync_max_seconds", help: "Longest fdatasync since start", labels: [],
                   value: Double(s.maxSyncNs) / 1e9),
            .counter(name: "tibet_twin_audit_write_failures_total", help: "Failed writes or fdatasyncs", labels: [], total: s.failures),
            .counter(name: "tibet_twin_audit_recoveries_total", help: "Recoveries after a failure", labels: [], total: s.recoveries),
            .counter(name: "tibet_twin_audit_lost_total", help: "Held records dropped during a long outage", labels: [], total: s.lost),
            .gauge(name: "tibet_twin_audit_held", help: "Records held in memory while the store fails", labels: [],
                   value: Double(s.held)),
            .gauge(name: "tibet_twin_audit_healthy", help: "1 while the audit chain is writable", labels: [],
                   value: s.healthy ? 1 : 0),
            .gauge(name: "tibet_twin_audit_waiting", help: "Records submitted and not yet written (queue and writer backlog)",
                   labels: [], value: Double(s.waiting)),
            .counter(name: "tibet_twin_audit_backlog_episodes_total",
                     help: "Times the audit backlog passed its bound (permits blocked with AUDIT until it drained)",
                     labels: [], total: s.backlogEpisodes),
        ]
    }
}

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

    func metricsText() -> [UInt8] { metrics.render() }

    func health() -> HealthSnapshot {
        guardBox.value?.health()
            ?? HealthSnapshot(guardAlive: false, auditHealthy: false, ready: false, heartbeat: 0, sinceTickMs: .infinity)
    }
}

/// The poller's sink into the guard loop, with a door that can be shut per device: on a reload
/// the old poller keeps running until the new one polls, but its states of replaced devices
/// must not reach the replaced device's new guard. Checking and handing over happen under one
/// lock, so no state slips through after `shutOut` returns.
final class PollerGate: Sendable {
    let guardLoop: GuardLoop
    private let closed = Mutex<Set<String>>([])

    init(guardLoop: GuardLoop) { self.guardLoop = guardLoop }

    func submit(_ state: PhysicalState) {
        closed.withLock { c in
            if !c.contains(state.device) { guardLoop.submit(physical: state) }
        }
    }

    func shutOut(_ devices: [String]) {
        closed.withLock { $0.formUnion(devices) }
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
