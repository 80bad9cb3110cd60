/// Subscriptions (OPC UA Part 4, 5.13 / 5.12): a subscription, monitored items that report
/// every change of status, value **or source timestamp** (DataChangeFilter trigger
/// StatusValueTimestamp, so a twin that rewrites the same value each cycle is seen as alive),
/// and the Publish exchange with acknowledgements, keep-alives and Republish of a missed
/// sequence number.

/// What the server granted for a subscription.
public struct SubscriptionInfo: Sendable, Hashable {
    public var id: UInt32
    public var publishingIntervalMs: Double
    public var lifetimeCount: UInt32
    public var maxKeepAliveCount: UInt32

    /// The longest a healthy subscription stays silent: one keep-alive period, ms.
    public var keepAliveMs: Double { publishingIntervalMs * Double(max(1, maxKeepAliveCount)) }
}

/// One node to monitor.
public struct MonitoredItemRequest: Sendable, Hashable {
    public var nodeId: NodeId
    /// Chosen by the client; notifications name the item by it.
    public var clientHandle: UInt32
    public var samplingIntervalMs: Double
    public var queueSize: UInt32

    public init(_ nodeId: NodeId, clientHandle: UInt32, samplingIntervalMs: Double, queueSize: UInt32 = 10) {
        self.nodeId = nodeId
        self.clientHandle = clientHandle
        self.samplingIntervalMs = samplingIntervalMs
        self.queueSize = queueSize
    }
}

/// What the server said about one monitored item.
public struct MonitoredItemResult: Sendable, Hashable {
    public var status: StatusCode
    public var monitoredItemId: UInt32
    public var revisedSamplingIntervalMs: Double
    public var revisedQueueSize: UInt32
}

/// A changed value of a monitored item.
public struct DataChange: Sendable, Hashable {
    public var clientHandle: UInt32
    public var value: DataValue
}

/// One notification message from Publish or Republish.
public struct NotificationMessage: Sendable, Hashable {
    public var sequenceNumber: UInt32
    public var publishTime: UADateTime
    public var dataChanges: [DataChange]
    /// A StatusChangeNotification (e.g. BadTimeout: the subscription expired on the server).
    public var statusChange: StatusCode?

    /// A keep-alive carries no notifications; its sequence number is the next one to come.
    public var isKeepAlive: Bool { dataChanges.isEmpty && statusChange == nil && !hadOtherNotifications }
    var hadOtherNotifications = false

    init(decoding r: inout UABinaryReader) throws(UADecodingError) {
        sequenceNumber = try r.readUInt32("NotificationMessage.SequenceNumber")
        publishTime = try r.readDateTime("NotificationMessage.PublishTime")
        dataChanges = []
        statusChange = nil
        let data = try r.readArray("NotificationMessage.NotificationData", minElementBytes: 3) { (e: inout UABinaryReader) throws(UADecodingError) in
            try e.readExtensionObject("NotificationMessage.NotificationData")
        }
        for object in data {
            guard case .binary(let body) = object.body else { hadOtherNotifications = true; continue }
            var b = UABinaryReader(body, limits: r.limits)
            switch object.typeId {
            case .numeric(ServiceId.dataChangeNotification):
                let items = try b.readArray("DataChangeNotification.MonitoredItems", minElementBytes: 5) { (e: inout UABinaryReader) throws(UADecodingError) in
                    DataChange(clientHandle: try e.readUInt32("MonitoredItemNotification.ClientHandle"),
                               value: try e.readDataValue("MonitoredItemNotification.Value"))
                }
                try b.skipDiagnosticInfos("DataChangeNotification.DiagnosticInfos")
                try b.expectEnd("DataChangeNotification")
                dataChanges += items
            case .numeric(ServiceId.statusChangeNotification):
                statusChange = try b.readStatusCode("StatusChangeNotification.Status")
                try b.skipDiagnosticInfo("StatusChangeNotification.DiagnosticInfo")
            default:
                hadOtherNotifications = true  // events: not asked for, not used
            }
        }
    }
}

/// The answer to one Publish.
public struct PublishResult: Sendable, Hashable {
    public var subscriptionId: UInt32
    public var availableSequenceNumbers: [UInt32]
    public var moreNotifications: Bool
    public var message: NotificationMessage
    /// One StatusCode per acknowledgement sent.
    public var acknowledgementResults: [StatusCode]
}

extension OPCUAClient {
    /// Creates a subscription publishing every `publishingIntervalMs`.
    public func createSubscription(publishingIntervalMs: Double, lifetimeCount: UInt32 = 30, maxKeepAliveCount: UInt32 = 5,
                                   maxNotificationsPerPublish: UInt32 = 0) throws(OPCUAError) -> SubscriptionInfo {
        let ch = try session("CreateSubscription")
        return try call(ch, "CreateSubscription", ServiceId.createSubscriptionRequest, ServiceId.createSubscriptionResponse, timeoutMs: options.timeoutMs) { w in
            w.writeDouble(publishingIntervalMs)
            w.writeUInt32(lifetimeCount)
            w.writeUInt32(maxKeepAliveCount)
            w.writeUInt32(maxNotificationsPerPublish)
            w.writeBool(true)  // PublishingEnabled
            w.writeUInt8(0)  // Priority
        } decode: { (r: inout UABinaryReader) throws(UADecodingError) in
            SubscriptionInfo(id: try r.readUInt32("SubscriptionId"), publishingIntervalMs: try r.readDouble("RevisedPublishingInterval"),
                             lifetimeCount: try r.readUInt32("RevisedLifetimeCount"), maxKeepAliveCount: try r.readUInt32("RevisedMaxKeepAliveCount"))
        }
    }

    /// Creates monitored items on `subscription`, reporting, with both timestamps, every change
    /// of status, value or source timestamp. One result per item, in order.
    public func createMonitoredItems(subscription: UInt32, _ items: [MonitoredItemRequest]) throws(OPCUAError) -> [MonitoredItemResult] {
        let ch = try session("CreateMonitoredItems")
        let results = try call(ch, "CreateMonitoredItems", ServiceId.createMonitoredItemsRequest, ServiceId.createMonitoredItemsResponse, timeoutMs: options.timeoutMs) { w in
            w.writeUInt32(subscription)
            w.writeUInt32(TimestampsToReturn.both.rawValue)
            w.writeArray(items) { w, item in
                ReadValueId(item.nodeId).encode(&w)
                w.writeUInt32(2)  // MonitoringMode Reporting
                w.writeUInt32(item.clientHandle)
                w.writeDouble(item.samplingIntervalMs)
                w.writeExtensionObject(typeId: .numeric(ServiceId.dataChangeFilter)) { f in
                    f.writeUInt32(2)  // Trigger StatusValueTimestamp
                    f.writeUInt32(0)  // DeadbandType None
                    f.writeDouble(0)
                }
                w.writeUInt32(item.queueSize)
                w.writeBool(true)  // DiscardOldest
            }
        } decode: { (r: inout UABinaryReader) throws(UADecodingError) in
            let results = try r.readArray("CreateMonitoredItemsResponse.Results", minElementBytes: 23) { (e: inout UABinaryReader) throws(UADecodingError) in
                let status = try e.readStatusCode("MonitoredItemCreateResult.StatusCode")
                let id = try e.readUInt32("MonitoredItemCreateResult.MonitoredItemId")
                let sampling = try e.readDouble("MonitoredItemCreateResult.RevisedSamplingInterval")
                let queue = try e.readUInt32("MonitoredItemCreateResult.RevisedQueueSize")
                _ = try e.readExtensionObject("MonitoredItemCreateResult.FilterResult")
                return MonitoredItemResult(status: status, monitoredItemId: id, revisedSamplingIntervalMs: sampling, revisedQueueSize: queue)
            }
            try r.skipDiagnosticInfos("CreateMonitoredItemsResponse.DiagnosticInfos")
            return results
        }
        guard results.count == items.count else {
            throw ch.fail(.protocolViolation("CreateMonitoredItems of \(items.count) items answered with \(results.count) results"), "CreateMonitoredItems")
        }
        return results
    }

    /// Sends one Publish, acknowledging `acknowledgements` (subscription id, sequence number),
    /// and waits up to `timeoutMs` for the answer (the server holds it until it has
    /// notifications or a keep-alive is due).
    public func publish(acknowledging acknowledgements: [(UInt32, UInt32)], timeoutMs: Int) throws(OPCUAError) -> PublishResult {
        let ch = try session("Publish")
        return try call(ch, "Publish", ServiceId.publishRequest, ServiceId.publishResponse, timeoutMs: timeoutMs) { w in
            w.writeArray(acknowledgements) { w, a in w.writeUInt32(a.0); w.writeUInt32(a.1) }
        } decode: { (r: inout UABinaryReader) throws(UADecodingError) in
            let id = try r.readUInt32("PublishResponse.SubscriptionId")
            let available = try r.readArray("PublishResponse.AvailableSequenceNumbers", minElementBytes: 4) { (e: inout UABinaryReader) throws(UADecodingError) in
                try e.readUInt32("AvailableSequenceNumbers")
            }
            let more = try r.readBool("PublishResponse.MoreNotifications")
            let message = try NotificationMessage(decoding: &r)
            let results = try r.readArray("PublishResponse.Results", minElementBytes: 4) { (e: inout UABinaryReader) throws(UADecodingError) in
                try e.readStatusCode("PublishResponse.Results")
            }
            try r.skipDiagnosticInfos("PublishResponse.DiagnosticInfos")
            return PublishResult(subscriptionId: id, availableSequenceNumbers: available, moreNotifications: more,
                                 message: message, acknowledgementResults: results)
        }
    }

    /// Asks the server to send a notification message again (after a gap in sequence numbers).
    /// Nil when the server no longer has it: it answered `BadMessageNotAvailable`, or (as
    /// asyncua does) an empty message with another sequence number.
    public func republish(subscription: UInt32, sequenceNumber: UInt32) throws(OPCUAError) -> NotificationMessage? {
        let ch = try session("Republish")
        do {
            let message = try call(ch, "Republish", ServiceId.republishRequest, ServiceId.republishResponse, timeoutMs: options.timeoutMs) { w in
                w.writeUInt32(subscription)
                w.writeUInt32(sequenceNumber)
            } decode: { (r: inout UABinaryReader) throws(UADecodingError) in try NotificationMessage(decoding: &r) }
            return message.sequenceNumber == sequenceNumber ? message : nil
        } catch {
            if error.statusCode == .badMessageNotAvailable { return nil }
            throw error
        }
    }

    /// Deletes subscriptions (best effort on the way out).
    public func deleteSubscriptions(_ ids: [UInt32]) throws(OPCUAError) {
        let ch = try session("DeleteSubscriptions")
        try call(ch, "DeleteSubscriptions", ServiceId.deleteSubscriptionsRequest, ServiceId.deleteSubscriptionsResponse, timeoutMs: options.timeoutMs) { w in
            w.writeArray(ids) { $0.writeUInt32($1) }
        } decode: { (r: inout UABinaryReader) throws(UADecodingError) in
            _ = try r.readArray("DeleteSubscriptionsResponse.Results", minElementBytes: 4) { (e: inout UABinaryReader) throws(UADecodingError) in
                try e.readStatusCode("DeleteSubscriptionsResponse.Results")
            }
            try r.skipDiagnosticInfos("DeleteSubscriptionsResponse.DiagnosticInfos")
        }
    }
}

/// Follows one subscription's sequence numbers: which messages to acknowledge, and which were
/// missed and must be asked for again with Republish. Pure: fed the messages, it says what to do.
public struct SequenceTracker: Sendable, Hashable {
    /// The last sequence number received (nil before the first).
    public private(set) var last: UInt32?
    /// Received and not yet acknowledged.
    public private(set) var pendingAcks: [UInt32] = []

    public init() {}

    /// Takes a message's sequence number; returns the numbers missed before it (to republish).
    /// A keep-alive carries the number of the *next* message, so the numbers before it that
    /// never came were missed too. A number at or before the last one is a repeat: ignored.
    public mutating func receive(_ sequence: UInt32, keepAlive: Bool) -> [UInt32] {
        var missed: [UInt32] = []
        if let last {
            let gap = sequence &- Self.next(last)  // 0: in order; huge: a repeat (behind us)
            if gap >= 1 << 31 { return [] }
            var s = Self.next(last)
            // A long gap is not chased: a server keeps only a few messages for Republish.
            while s != sequence && missed.count < 100 {
                missed.append(s)
                s = Self.next(s)
            }
        }
        if keepAlive {
            last = Self.previous(sequence)
        } else {
            last = sequence
            pendingAcks.append(sequence)
        }
        return missed
    }

    /// Marks a republished message received (to acknowledge it).
    public mutating func recovered(_ sequence: UInt32) { pendingAcks.append(sequence) }

    /// Takes the acknowledgements to send with the next Publish.
    public mutating func takeAcks() -> [UInt32] {
        defer { pendingAcks = [] }
        return pendingAcks
    }

    static func next(_ s: UInt32) -> UInt32 { s == UInt32.max ? 1 : s + 1 }
    static func previous(_ s: UInt32) -> UInt32 { s <= 1 ? UInt32.max : s - 1 }
}
