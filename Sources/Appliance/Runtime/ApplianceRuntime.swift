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
    /// `publish:`: the permits to an MQTT broker, for display and records (nil: off).
    package let publisher: PermitPublisher?
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
        /// A reload's validation that overran its time limit and was abandoned, while its
        /// thread still runs: no second one starts until it is over.
        var abandonedValidation: BoundedWork?
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
                 gate: PollerGate, metrics: ApplianceMetrics, auditor: InterlockAuditor, publisher: PermitPublisher?,
                 notifier: SystemdNotifier, logger: Logger, clock: any TimeSource) {
        self.publisher = publisher
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
        let descriptorLimit: Int
        do {
            descriptorLimit = try DescriptorLimit.capForSelect()
        } catch {
            throw StartupError("descriptor limit: \(error)")
        }
        // Refused here, with the numbers, rather than failing at the 1,000th connection.
        if let refusal = DescriptorBudget(config: config, maps: loaded.maps)
            .refusal(limit: min(descriptorLimit, DescriptorBudget.selectCeiling)) {
            throw StartupError("\(config.sourceFile): \(refusal)")
        }
        // The reset token is read before anything is bound: a missing or readable-by-all
        // file stops the start like any other config error.
        var resetToken: [UInt8]?
        if let path = config.http.resetTokenFile {
            do {
                resetToken = try ResetTokenFile.read(path: path)
            } catch {
                let at = config.http.resetTokenFileLocation?.description ?? config.sourceFile
                throw StartupError("\(at): http.reset_token_file: \(error)")
            }
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
            throw StartupError(config.startupLine("interlock.listen", "\(error)"))
        }
        let controlBox = LateBox<GuardLoop>()
        let control = RuntimeControl(guardBox: controlBox, metrics: metrics)
        let api = HTTPAPI(control: control, resetPolicy: ResetPolicy(
            token: resetToken, listenHost: config.http.listen.host, perSecond: config.http.resetsPerSecond))
        let http = HTTPServer(host: config.http.listen.host, port: config.http.listen.port,
                              maxConnections: DescriptorBudget.httpConnections, maxPerClient: config.http.maxConnectionsPerClient,
                              requestTimeoutMs: config.http.requestTimeoutMs, handler: api.handler)
        do {
            try await http.start()
        } catch {
            interlock.stopImmediately()
            throw StartupError(config.startupLine("http.listen", "\(error)"))
        }

        let audit: AuditStore
        do {
            audit = try AuditStore.open(AuditStore.Configuration(
                directory: config.audit.dir, keyPath: config.audit.key, node: config.node,
                segmentBytes: config.audit.segmentBytes,
                retainMaxBytes: config.audit.retainMaxBytes, retainMaxAgeDays: config.audit.retainMaxAgeDays))
        } catch {
            interlock.stopImmediately()
            await http.stop()
            let key = error.kind == .key || error.kind == .keyPermissions ? "audit.key" : "audit.dir"
            throw StartupError(config.startupLine(key, "\(error)"))
        }
        audit.reserveBacklog(forIntents: loaded.maps.reduce(0) { $0 + $1.intents.count })
        let auditor = InterlockAuditor(audit: audit, node: config.node, clock: clock)
        auditBox.set(auditor)

        // The publisher only receives each table the interlock gets (a store and a signal);
        // it never feeds anything back.
        var publisher: PermitPublisher?
        if let p = config.publish {
            do {
                let options = try TwinMQTTSource.Settings.options(p.connection)
                publisher = PermitPublisher(settings: PermitPublisher.Settings(options: options, sparkplug: p.sparkplug, json: p.json,
                                                                               node: config.node),
                                            clock: clock, refusedCommand: { [auditor] in auditor.record($0) })
            } catch {
                interlock.stopImmediately()
                await http.stop()
                audit.close(reason: "start failed: publish: \(error)")
                throw StartupError("\(error.file): \(error.message)")
            }
        }
        let guardLoop = GuardLoop(
            configuration: GuardLoop.Configuration(node: config.node, checkpointS: config.audit.checkpointS),
            maps: loaded.maps, layout: loaded.layout, audit: audit, metrics: metrics, notifier: notifier,
            clock: clock, logger: Logger(label: "tibet-twin.guard")) { [interlock, publisher] table in
            interlock.publish(table)
            publisher?.offer(table)
        }
        controlBox.set(guardLoop)

        let seqResets = TwinSeqResetAudit(audit: audit, logger: Logger(label: "tibet-twin.twin"))
        let pipeline = TwinFeedPipeline(parser: loaded.parser, seqReset: { seqResets.record($0) },
                                        withdraw: { [guardLoop] device in guardLoop.withdrawTwin(device: device) },
                                        newsSink: { [guardLoop] state, news in guardLoop.submit(twin: state, wake: news) })
        let twin: TwinFeedService
        do {
            twin = try TwinFeedService(feeds: loaded.config.twin.feeds, pipeline: pipeline, logger: Logger(label: "tibet-twin.twin"),
                                       events: { [audit] event in audit.submit(TwinFeedEventAudit.record(event)) },
                                       maps: loaded.maps)
        } catch {
            interlock.stopImmediately()
            await http.stop()
            audit.close(reason: "start failed: twin feeds: \(error)")
            throw StartupError("\(error)")
        }
        var started: [any TwinSource] = []
        for (index, source) in twin.sources.enumerated() {
            do {
                try await source.start()
                started.append(source)
            } catch {
                for s in started.reversed() { await s.stop() }
                interlock.stopImmediately()
                await http.stop()
                audit.close(reason: "start failed: twin feed \(source.name): \(error)")
                throw StartupError(config.startupLine(Self.feedKeyPath(config.twin.feeds, index), Self.describe(error)))
            }
        }

        let gate = PollerGate(guardLoop: guardLoop)
        let poller = Poller(maps: loaded.maps, newsSink: { [gate] state, news in gate.submit(state, news: news) })
        let runtime = ApplianceRuntime(configPath: configPath, loaded: loaded, audit: audit, guardLoop: guardLoop,
                                       interlock: interlock, http: http, twin: twin, poller: poller, gate: gate, metrics: metrics,
                                       auditor: auditor, publisher: publisher, notifier: notifier, logger: logger, clock: clock)
        do {
            try publisher?.start()
            try guardLoop.start()
            try poller.start()
            try interlock.start()
        } catch {
            publisher?.stop()
            guardLoop.stop()
            poller.stop()
            for s in started.reversed() { await s.stop() }
            interlock.stopImmediately()
            await http.stop()
            audit.close(reason: "start failed: \(error)")
            throw StartupError("start: \(error)")
        }
        runtime.registerMetrics()
        metrics.addSource { [http, gate = api.resetGate] in HTTPMetrics.samples(server: http.counters, resets: gate.counters) }
        audit.submit(AuditRecord(action: .configLoaded, erin: .object([
            "accepted": .bool(true), "reason": .string("start"), "config": loaded.auditJSON,
        ]), erachter: .object(["why": .string("the config and maps the guard judges by from now on")]),
            time: clock.now()), onDurable: nil)
        logger.info("started", metadata: [
            "node": "\(config.node)", "devices": "\(loaded.maps.count)",
            "interlock": "\(interlock.address)", "http": "\(config.http.listen.host):\(http.port ?? 0)",
            "audit": "\(config.audit.dir)",
        ])
        if let path = config.http.resetTokenFile {
            logger.notice("resets: authenticated (Authorization: Bearer, the token of http.reset_token_file \(path))")
        } else {
            logger.notice("resets: NOT authenticated: any local user may reset (loopback only, Host and Origin checked); set http.reset_token_file to require a token")
        }
        return runtime
    }

    /// `twin.feeds[1].tcp`: the key of a feed, for start-up errors.
    static func feedKeyPath(_ feeds: [ApplianceConfig.Feed], _ index: Int) -> String {
        guard feeds.indices.contains(index) else { return "twin.feeds" }
        switch feeds[index] {
        case .file: return "twin.feeds[\(index)].file"
        case .tcp: return "twin.feeds[\(index)].tcp"
        case .unix: return "twin.feeds[\(index)].unix"
        case .mqtt: return "twin.feeds[\(index)].mqtt"
        case .opcua: return "twin.feeds[\(index)].opcua"
        }
    }

    /// A feed's start-up failure in words: the errno's name and meaning where there is one,
    /// never a Swift type name of the event-loop library.
    static func describe(_ error: TwinSourceError) -> String {
        switch error.kind {
        case .bind:
            let address = error.source.split(separator: ":", maxSplits: 1).last.map(String.init) ?? error.source
            if let e = error.errno { return "cannot listen on \(address): \(Errno(e).description)" }
            return "cannot listen on \(address)"
        default:
            if let e = error.errno { return "\(error.function) failed: \(Errno(e).description): \(error.detail)" }
            return "\(error.function) failed: \(error.detail)"
        }
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
            .init(service: PublisherStopper(publisher: publisher), serviceName: "publish"),
            .init(service: StopNotifier(notifier: notifier, logger: logger), serviceName: "notify"),
        ]
        var config = ServiceGroupConfiguration(
            services: services,
            gracefulShutdownSignals: handleSignals ? [.sigterm, .sigint] : [],
            logger: Logger(label: "tibet-twin.lifecycle"))
        config.maximumGracefulShutdownDuration = .seconds(Double(loaded.config.interlock.stopGraceMs) / 1000 + 10)
        // A part that ignores cancellation must not keep the process alive: 5 s after the
        // graceful shutdown overran, the lifecycle ends the process (fatalError) and systemd
        // restarts it. The permits were 0 since the first moment of the stop.
        config.maximumCancellationDuration = .seconds(5)
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

    /// How long a reload may spend reading and validating the config and maps before it is
    /// abandoned and the running set stays (docs/operations.md).
    package static let reloadValidationLimit: Duration = .seconds(10)

    /// SIGHUP: reads and validates the config and every map again. Invalid: the running set
    /// stays; the refusal is logged and audited. Valid: unchanged devices keep their state and
    /// permits, replaced and new devices start blocked and re-arm (the guard drops their permits
    /// in the same step), and the poller restarts with the new maps.
    ///
    /// Reading and validating run on a thread of their own, bounded by `limit`: validation that
    /// takes longer (a hung disk or network mount) is abandoned and the
    /// reload refused, and a cancelled reload (SIGTERM) returns at once; neither holds up the
    /// lifecycle or a thread of Swift's pool. `load` is `LoadedConfig.load`, replaceable in tests.
    @discardableResult
    package func reload(limit: Duration = ApplianceRuntime.reloadValidationLimit,
                        load: @escaping @Sendable (String) throws(StartupError) -> LoadedConfig = { path throws(StartupError) in
                            try LoadedConfig.load(configPath: path)
                        }) async -> ReloadOutcome {
        let (old, wasBusy, abandoned) = state.withLock { s -> (LoadedConfig, Bool, BoundedWork?) in
            defer { s.reloading = true }
            s.abandonedValidation?.reap()
            if s.abandonedValidation?.finished == true { s.abandonedValidation = nil }
            return (s.loaded, s.reloading, s.abandonedValidation)
        }
        if wasBusy { return .busy }
        defer { state.withLock { $0.reloading = false } }
        try? notifier.reloading()
        let now = clock.now()
        if abandoned != nil {
            return refuseReload([
                "\(configPath): reload refused: the validation of an earlier reload overran its time limit and is still running",
            ], now: now)
        }
        let path = configPath
        let (outcome, work) = await BoundedWork.run(name: "reload validation", limit: limit) {
            () -> Result<LoadedConfig, StartupError> in
            do throws(StartupError) {
                return .success(try load(path))
            } catch {
                return .failure(error)
            }
        }
        let next: LoadedConfig
        switch outcome {
        case .done(.success(let loaded)):
            next = loaded
        case .done(.failure(let error)):
            return refuseReload(error.lines, now: now)
        case .timedOut:
            state.withLock { $0.abandonedValidation = work }
            let seconds = Double(limit.components.seconds) + Double(limit.components.attoseconds) / 1e18
            return refuseReload([
                "\(configPath): reload abandoned: reading and validating the config and maps took longer than \(formatSeconds(seconds)) s",
            ], now: now)
        case .cancelled:
            state.withLock { $0.abandonedValidation = work }
            return refuseReload(["\(configPath): reload abandoned: the appliance is stopping"], now: now)
        case .threadFailed(let error):
            return refuseReload(["\(configPath): reload refused: \(error)"], now: now)
        }
        let restartOnly = next.restartOnlyChanges(from: old)
        audit.reserveBacklog(forIntents: next.maps.reduce(0) { $0 + $1.intents.count })
        // From here on the running poller's states of devices whose map changes (or goes) never
        // reach the guard: the new slot of a replaced device sees only states read by its new map.
        let nextByName = Dictionary(next.maps.map { ($0.device, $0) }, uniquingKeysWith: { a, _ in a })
        let leaving = old.maps.filter { nextByName[$0.device] != $0 }.map(\.device)
        let (oldPoller, oldGate) = state.withLock { ($0.poller, $0.gate) }
        oldGate.shutOut(leaving)
        // Cancelled (SIGTERM) while the guard applies it: the stop goes on without waiting.
        let applied = OneShot<GuardReloadResult?>()
        let answer = await withTaskCancellationHandler {
            guardLoop.reload(GuardReload(maps: next.maps, layout: next.layout)) { applied.resolve($0) }
            return await applied.wait()
        } onCancel: {
            applied.resolve(nil)
        }
        guard let result = answer else {
            return refuseReload(["\(configPath): reload abandoned: the appliance is stopping"], now: now)
        }
        twin.pipeline.replace(parser: next.parser, forgetting: result.replaced + result.removed)
        for source in twin.sources {
            (source as? TwinMQTTSource)?.replaceBindings(maps: next.maps)
            (source as? TwinOPCUASource)?.replaceBindings(maps: next.maps)
        }
        if !result.restarted.isEmpty || !result.removed.isEmpty {
            // The new poller starts before the old one stops: an unchanged device is polled by
            // both for a moment, never by neither (its state must not go stale over a reload).
            let gate = oldGate.next()
            let newPoller = Poller(maps: next.maps, newsSink: { [gate] s, news in gate.submit(s, news: news) })
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
                s.retiredPolls.absorb(retired)
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

    /// Logs, counts and audits a refused reload; the running set stays.
    private func refuseReload(_ lines: [String], now: ClockReading) -> ReloadOutcome {
        for line in lines { logger.error("reload refused: \(line)") }
        metrics.countReload(ok: false)
        audit.submit(AuditRecord(action: .configLoaded, erin: .object([
            "accepted": .bool(false), "reason": .string("reload"), "errors": .array(lines.map { .string($0) }),
            "config_file": .string(configPath),
        ]), erachter: .object(["why": .string("SIGHUP: the new config or maps are invalid; the running set stays")]),
            time: now), onDurable: nil)
        try? notifier.ready(status: "reload refused: \(lines.first ?? "")")
        return .refused(lines)
    }
}

/// `0.5`, `10`: seconds as an operator reads them.
private func formatSeconds(_ s: Double) -> String {
    s == s.rounded() ? String(Int(s)) : String(s)
}
