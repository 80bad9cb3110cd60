import Foundation
import Logging
import Modbus
import Platform
import ServiceLifecycle
import Synchronization
import TibetTwin
import UnixSignals

/// The running appliance (`tibet-twin run`): every part wired together, the one-way flow of docs/architecture.md.
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
/// shutdown is the safe stop: systemd is told STOPPING, the interlock serves every permit as 0
/// for `stop_grace_ms` and closes, HTTP closes, the feeds stop, the guard loop and the poller
/// stop, and the audit chain is closed last with a `stopped` token (the reverse of the order the
/// services are listed in `run`). SIGHUP reloads (`reload()`).
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
        let twin: TwinFeedService
        do {
            twin = try TwinFeedService(feeds: loaded.config.twin.feeds, pipeline: pipeline, logger: Logger(label: "tibet-twin.twin"))
        } catch {
            interlock.stopImmediately()
            await http.stop()
            audit.close(reason: "start failed: twin feeds: \(error)")
            throw StartupError("\(error)")
        }
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
}
