import Modbus
import Platform
import TibetTwin

/// A fixed-bucket latency histogram (Prometheus style): cheap to record on a poll thread,
/// mergeable, and enough to read p50/p99 off to the bucket bound.
package struct PollLatencyHistogram: Sendable, Hashable {
    /// Upper bounds of the buckets, in microseconds; the last bucket is everything above.
    package static let boundsUs: [Int64] = [
        50, 100, 200, 300, 500, 750, 1_000, 1_500, 2_000, 3_000, 4_000, 5_000, 7_500, 10_000, 15_000,
        20_000, 30_000, 50_000, 75_000, 100_000, 200_000, 500_000, 1_000_000, 2_000_000, 5_000_000,
    ]
    /// Counts per bucket; `counts.count == boundsUs.count + 1` (the last is +Inf).
    package private(set) var counts: [Int] = Array(repeating: 0, count: boundsUs.count + 1)
    package private(set) var count = 0
    package private(set) var sumNs: Int64 = 0
    package private(set) var maxNs: Int64 = 0

    package init() {}

    /// Adds one observation.
    package mutating func record(ns: Int64) {
        let us = max(ns, 0) / 1000
        var i = 0
        let b = Self.boundsUs
        while i < b.count && us > b[i] { i += 1 }
        counts[i] += 1
        count += 1
        sumNs &+= max(ns, 0)
        if ns > maxNs { maxNs = ns }
    }

    /// Adds another histogram's observations.
    package mutating func merge(_ other: PollLatencyHistogram) {
        for i in counts.indices { counts[i] += other.counts[i] }
        count += other.count
        sumNs &+= other.sumNs
        maxNs = max(maxNs, other.maxNs)
    }

    /// The observations in `self` that are not in `earlier` (a snapshot of the same histogram
    /// taken before); the maximum stays `self`'s.
    package func subtracting(_ earlier: PollLatencyHistogram) -> PollLatencyHistogram {
        var d = self
        for i in d.counts.indices { d.counts[i] -= earlier.counts[i] }
        d.count -= earlier.count
        d.sumNs &-= earlier.sumNs
        return d
    }

    /// The upper bound (ms) of the bucket holding quantile `q` (0…1): "p99 ≤ this". The
    /// overflow bucket reports the maximum seen. Nil when empty.
    package func quantileUpperBoundMs(_ q: Double) -> Double? {
        guard count > 0 else { return nil }
        let rank = Int((Double(count) * q).rounded(.up))
        var seen = 0
        for (i, c) in counts.enumerated() {
            seen += c
            if seen >= max(rank, 1) {
                return i < Self.boundsUs.count ? Double(Self.boundsUs[i]) / 1000 : Double(maxNs) / 1_000_000
            }
        }
        return Double(maxNs) / 1_000_000
    }

    /// Mean in milliseconds (0 when empty).
    package var meanMs: Double { count == 0 ? 0 : Double(sumNs) / Double(count) / 1_000_000 }
}

/// Why a poll (or one of its requests) failed, for counters.
package enum PollErrorKind: String, Sendable, Hashable, CaseIterable {
    case connect, timeout, exception, connectionLost = "connection_lost", badResponse = "bad_response"
    case notConnected = "not_connected", decode, other

    init(_ kind: ModbusError.Kind) {
        switch kind {
        case .connect: self = .connect
        case .timeout: self = .timeout
        case .exception: self = .exception
        case .connectionLost: self = .connectionLost
        case .badResponse: self = .badResponse
        case .notConnected: self = .notConnected
        case .other: self = .other
        }
    }
}

/// One device's poll counters.
package struct DevicePollStats: Sendable, Hashable {
    package var device: String
    package var polls = 0
    /// Polls whose state was all good.
    package var goodPolls = 0
    /// Read requests sent (groups, including retries after a split).
    package var requests = 0
    /// Schedule slots skipped because the previous poll ran past them.
    package var missedSlots = 0
    /// Successful connects (the first one included).
    package var connects = 0
    /// Groups split after exception 2.
    package var splits = 0
    /// Requests the poll plan currently makes per poll.
    package var groups = 0
    package var connected = false
    package var errors: [PollErrorKind: Int] = [:]
    /// The last poll's error text, nil if it was good.
    package var lastError: String?
    /// The last poll's duration, request to last answer; nil before the first.
    package var lastPollNs: Int64?

    package init(device: String) { self.device = device }

    /// Adds another run's counters of the same device (a poller a reload retired); the
    /// state (connected, last error, last duration) becomes `other`'s.
    package mutating func absorb(_ other: DevicePollStats) {
        polls += other.polls
        goodPolls += other.goodPolls
        requests += other.requests
        missedSlots += other.missedSlots
        connects += other.connects
        splits += other.splits
        groups = other.groups
        connected = other.connected
        for (k, v) in other.errors { errors[k, default: 0] += v }
        lastError = other.lastError
        lastPollNs = other.lastPollNs
    }
}

/// A snapshot of the poller's counters, safe to hand to any thread (HTTP metrics, status).
package struct PollerStats: Sendable, Hashable {
    package var devices: [DevicePollStats] = []
    /// Poll duration: from the poll's start to the last answer.
    package var latency = PollLatencyHistogram()
    /// Schedule jitter: how late each poll started after its deadline.
    package var jitter = PollLatencyHistogram()

    package init() {}

    /// Adds a retired poller's counters: one entry per device (a device polled by several
    /// pollers over reloads is summed, so the list does not grow with each reload).
    package mutating func absorb(_ other: PollerStats) {
        for d in other.devices {
            if let i = devices.firstIndex(where: { $0.device == d.device }) {
                devices[i].absorb(d)
            } else {
                devices.append(d)
            }
        }
        latency.merge(other.latency)
        jitter.merge(other.jitter)
    }

    package var polls: Int { devices.reduce(0) { $0 + $1.polls } }
    package var goodPolls: Int { devices.reduce(0) { $0 + $1.goodPolls } }
    package var requests: Int { devices.reduce(0) { $0 + $1.requests } }
    package var missedSlots: Int { devices.reduce(0) { $0 + $1.missedSlots } }
    package var connects: Int { devices.reduce(0) { $0 + $1.connects } }
    /// Errors by kind, all devices.
    package var errors: [PollErrorKind: Int] {
        var out: [PollErrorKind: Int] = [:]
        for d in devices { for (k, v) in d.errors { out[k, default: 0] += v } }
        return out
    }
}
