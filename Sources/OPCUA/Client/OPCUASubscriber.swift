import Platform

/// Keeps one subscription to a list of nodes alive on a thread of its own: connect, create the
/// subscription and its monitored items, Publish with acknowledgements, Republish what was
/// missed (or Read everything afresh when the server no longer has it), and after any failure
/// reconnect with a capped backoff and subscribe again. It reports what happens as events; it
/// decides nothing about the values (that is the guard's job).
public final class OPCUASubscriber: @unchecked Sendable {
    public struct Configuration: Sendable, Hashable {
        public var endpoint: String
        public var options: OPCUAClientOptions
        /// The nodes to monitor; events name them by their index here.
        public var nodes: [NodeIdText]
        public var samplingIntervalMs: Double
        /// Per node (same order as `nodes`), when they differ; nil: `samplingIntervalMs` for all.
        public var samplingIntervalsMs: [Double]?
        public var publishingIntervalMs: Double
        /// Publishing intervals without a change before the server sends a keep-alive.
        public var maxKeepAliveCount: UInt32 = 5
        /// Reconnect backoff: doubles from the first to the cap.
        public var backoffFirstMs: Int = 200
        public var backoffCapMs: Int = 5000
        public var threadName = "opcua-sub"

        public init(endpoint: String, nodes: [NodeIdText], samplingIntervalMs: Double, publishingIntervalMs: Double,
                    options: OPCUAClientOptions = OPCUAClientOptions()) {
            self.endpoint = endpoint
            self.nodes = nodes
            self.samplingIntervalMs = samplingIntervalMs
            self.publishingIntervalMs = publishingIntervalMs
            self.options = options
        }
    }

    /// One node's new value.
    public struct NodeValue: Sendable, Hashable {
        /// Index into `Configuration.nodes`.
        public var index: Int
        public var value: DataValue

        public init(index: Int, value: DataValue) {
            self.index = index
            self.value = value
        }
    }

    public enum Event: Sendable, Hashable {
        /// Subscribed (again): each node's monitored-item StatusCode (Bad: that node is not
        /// monitored, e.g. BadNodeIdUnknown).
        case subscribed([StatusCode])
        /// New values (with their StatusCodes and timestamps).
        case values([NodeValue])
        /// The server says the subscription is alive and nothing changed.
        case keepAlive
        /// The connection or the subscription is lost; every value is unknown until the next
        /// `subscribed`. The client reconnects after `retryInMs`.
        case lost(OPCUAError, retryInMs: Int)
    }

    public let configuration: Configuration
    private let onEvent: @Sendable (Event) -> Void
    private let parker = Parker()
    private let lock = MonotonicCondition()
    // Guarded by `lock`.
    private var stopping = false
    private var current: OPCUAClient?
    private var thread: OSThread?

    /// `onEvent` runs on the subscriber's thread: hand the event over, do not block in it.
    public init(_ configuration: Configuration, onEvent: @escaping @Sendable (Event) -> Void) {
        self.configuration = configuration
        self.onEvent = onEvent
    }

    deinit { stop() }

    /// Starts the subscriber's thread. `threadStart` runs first on it (the appliance sets the
    /// thread's priority there).
    public func start(threadStart: (@Sendable () -> Void)? = nil) throws(ThreadStartError) {
        thread = try OSThread(name: configuration.threadName) { [self] in
            threadStart?()
            run()
        }
    }

    /// Ends the subscription (a blocked request is interrupted) and waits for the thread.
    public func stop() {
        let client: OPCUAClient? = lock.withLock {
            stopping = true
            return current
        }
        client?.interrupt()
        parker.wake()
        thread?.join()
        thread = nil
    }

    private var isStopping: Bool { lock.withLock { stopping } }

    private func run() {
        var backoff = configuration.backoffFirstMs
        while !isStopping {
            let client: OPCUAClient
            do { client = try OPCUAClient(endpoint: configuration.endpoint, options: configuration.options) } catch {
                onEvent(.lost(error, retryInMs: configuration.backoffCapMs))
                parker.wait(untilMonotonicNs: monotonicNowNs() + Int64(configuration.backoffCapMs) * 1_000_000)
                continue
            }
            let registered: Bool = lock.withLock {
                if stopping { return false }
                current = client
                return true
            }
            guard registered else { break }
            do {
                try follow(client, resetBackoff: { backoff = configuration.backoffFirstMs })
            } catch {
                if !isStopping { onEvent(.lost(error, retryInMs: backoff)) }
            }
            lock.withLock { current = nil }
            client.disconnect()
            if isStopping { break }
            parker.wait(untilMonotonicNs: monotonicNowNs() + Int64(backoff) * 1_000_000)
            backoff = min(backoff * 2, configuration.backoffCapMs)
        }
    }

    /// One connection's life: subscribe, then publish until something fails or `stop()`.
    private func follow(_ client: OPCUAClient, resetBackoff: () -> Void) throws(OPCUAError) {
        try client.connect()
        var nodes: [NodeId] = []
        for text in configuration.nodes { nodes.append(try client.resolve(text)) }
        let sub = try client.createSubscription(publishingIntervalMs: configuration.publishingIntervalMs,
                                                lifetimeCount: configuration.maxKeepAliveCount * 3,
                                                maxKeepAliveCount: configuration.maxKeepAliveCount)
        let requests = nodes.enumerated().map { i, node in
            let sampling = configuration.samplingIntervalsMs.flatMap { $0.indices.contains(i) ? $0[i] : nil } ?? configuration.samplingIntervalMs
            return MonitoredItemRequest(node, clientHandle: UInt32(i), samplingIntervalMs: sampling)
        }
        let results = try client.createMonitoredItems(subscription: sub.id, requests)
        onEvent(.subscribed(results.map(\.status)))
        resetBackoff()
        var tracker = SequenceTracker()
        // A healthy server answers a Publish at least once per keep-alive period.
        let publishTimeoutMs = Int(sub.keepAliveMs * 2) + configuration.options.timeoutMs
        while !isStopping {
            let acks = tracker.takeAcks().map { (sub.id, $0) }
            let result = try client.publish(acknowledging: acks, timeoutMs: publishTimeoutMs)
            guard result.subscriptionId == sub.id || result.message.isKeepAlive else {
                throw OPCUAError(.protocolViolation("Publish answered for subscription \(result.subscriptionId), ours is \(sub.id)"),
                                 operation: "Publish", endpoint: configuration.endpoint)
            }
            if let status = result.message.statusChange, !status.isGood {
                throw OPCUAError(.serviceFault(status), operation: "Publish (subscription status)", endpoint: configuration.endpoint)
            }
            let missed = tracker.receive(result.message.sequenceNumber, keepAlive: result.message.isKeepAlive)
            var lostSome = false
            for number in missed {
                if let again = try client.republish(subscription: sub.id, sequenceNumber: number) {
                    tracker.recovered(number)
                    emit(again.dataChanges, count: nodes.count)
                } else {
                    lostSome = true
                }
            }
            if lostSome {
                // Changes are gone for good: the current values stand in for them.
                let values = try client.readValues(nodes)
                onEvent(.values(values.enumerated().map { NodeValue(index: $0, value: $1) }))
            }
            if result.message.isKeepAlive {
                onEvent(.keepAlive)
            } else {
                emit(result.message.dataChanges, count: nodes.count)
            }
        }
        try? client.deleteSubscriptions([sub.id])
    }

    private func emit(_ changes: [DataChange], count: Int) {
        let values = changes.compactMap { c -> NodeValue? in
            Int(c.clientHandle) < count ? NodeValue(index: Int(c.clientHandle), value: c.value) : nil
        }
        if !values.isEmpty { onEvent(.values(values)) }
    }
}
