import Modbus
import TibetTwin

/// The per-device and per-intent series of `/metrics` (docs/operations.md#metrics), built at
/// scrape time from the status snapshot, the poller's and the twin feeds' counters. Every
/// `device` and `intent` label value is a name from the maps in force: counters of anything
/// else (a twin line naming an unknown device, a device a reload removed) are not shown.
enum DeviceMetrics {
    /// The guard's view: permits, reasons, latches, ages, drift, limits, blocks, input health.
    static func samples(_ status: StatusSnapshot) -> [MetricSample] {
        var out: [MetricSample] = []
        out.reserveCapacity(status.devices.count * 16)
        for d in status.devices {
            let dl = [("device", d.device)]
            for i in d.intents {
                let il = [("device", d.device), ("intent", i.intent)]
                out.append(.gauge(name: "tibet_twin_intent_permit", help: "Permit served for the intent (1 = permitted)",
                                  labels: il, value: i.permit ? 1 : 0))
                out.append(.gauge(name: "tibet_twin_intent_reason_code",
                                  help: "Reason code of the intent (0 = OK; the codes of docs/decision-rule.md)",
                                  labels: il, value: Double(i.reasonCode.rawValue)))
                out.append(.gauge(name: "tibet_twin_intent_reason",
                                  help: "1 for the intent's current reason (one series per intent, label reason)",
                                  labels: il + [("reason", i.reasonCode.name)], value: 1))
                out.append(.gauge(name: "tibet_twin_intent_latched", help: "1 while the intent is latched and waits for a reset",
                                  labels: il, value: i.latched ? 1 : 0))
            }
            out.append(.gauge(name: "tibet_twin_device_inputs_good",
                              help: "1 while the device's inputs (PLC poll, twin feed, identity) are good (/readyz)",
                              labels: dl, value: d.inputProblems.isEmpty ? 1 : 0))
            out.append(.gauge(name: "tibet_twin_device_physical_data",
                              help: "1 while the last poll of the device's PLC answered (0: no data)",
                              labels: dl, value: d.physicalError == nil ? 1 : 0))
            if let r = d.reasonCode {
                out.append(.gauge(name: "tibet_twin_device_reason_code",
                                  help: "Reason code the interlock serves for the device (0 = OK)", labels: dl, value: Double(r.rawValue)))
            }
            out.append(.counter(name: "tibet_twin_device_blocks_total",
                                help: "Permit drops of the device's intents (since start or since its map was replaced)",
                                labels: dl, total: d.blockCount))
            if let v = d.physicalAgeMs, v.isFinite, d.physicalError == nil {
                out.append(.gauge(name: "tibet_twin_device_physical_age_seconds", help: "Age of the last physical state",
                                  labels: dl, value: v / 1000))
            }
            if let v = d.twinAgeMs, v.isFinite {
                out.append(.gauge(name: "tibet_twin_device_twin_age_seconds", help: "Age of the last twin state",
                                  labels: dl, value: v / 1000))
            }
            if let v = d.driftMs, v.isFinite {
                out.append(.gauge(name: "tibet_twin_device_drift_seconds", help: "|physical time - twin ts| at the last evaluation",
                                  labels: dl, value: v / 1000))
            }
            if let v = d.maxAgeMs {
                out.append(.gauge(name: "tibet_twin_device_max_age_seconds", help: "The device's max_age_ms limit",
                                  labels: dl, value: v / 1000))
            }
            if let v = d.maxDriftMs {
                out.append(.gauge(name: "tibet_twin_device_max_drift_seconds", help: "The device's max_drift_ms limit",
                                  labels: dl, value: v / 1000))
            }
        }
        return out
    }

    /// The poller's figures per device: polls, errors by kind (a kind appears at its first
    /// error), the last poll's duration, the connection.
    static func pollSamples(_ stats: PollerStats, retired: PollerStats, devices: Set<String>) -> [MetricSample] {
        var totals: [String: DevicePollStats] = [:]
        for d in retired.devices where devices.contains(d.device) { totals[d.device, default: DevicePollStats(device: d.device)].absorb(d) }
        var live: [String: DevicePollStats] = [:]
        for d in stats.devices where devices.contains(d.device) {
            totals[d.device, default: DevicePollStats(device: d.device)].absorb(d)
            live[d.device] = d
        }
        var out: [MetricSample] = []
        for name in totals.keys.sorted() {
            let t = totals[name]!
            let dl = [("device", name)]
            out.append(.counter(name: "tibet_twin_device_polls_total", help: "Polls of the device's PLC", labels: dl,
                                total: UInt64(t.polls)))
            for kind in PollErrorKind.allCases {
                guard let n = t.errors[kind], n > 0 else { continue }
                out.append(.counter(name: "tibet_twin_device_poll_errors_total", help: "Failed polls of the device, by kind",
                                    labels: dl + [("kind", kind.rawValue)], total: UInt64(n)))
            }
            guard let l = live[name] else { continue }
            out.append(.gauge(name: "tibet_twin_device_plc_connected", help: "1 while the connection to the device's PLC is open",
                              labels: dl, value: l.connected ? 1 : 0))
            if let ns = l.lastPollNs {
                out.append(.gauge(name: "tibet_twin_device_poll_duration_seconds",
                                  help: "Duration of the device's last poll, request to last answer", labels: dl, value: Double(ns) / 1e9))
            }
        }
        return out
    }

    /// The twin feeds' lines per device, over all sources: accepted, and dropped by reason
    /// (a reason appears at its first drop). Lines that name no device of the maps are only
    /// in the per-source `tibet_twin_twin_lines_dropped_total`.
    static func twinSamples(_ counters: [TwinFeedCounters], devices: Set<String>) -> [MetricSample] {
        var sum: [String: DeviceTwinCounters] = [:]
        for c in counters {
            for (name, d) in c.devices where devices.contains(name) {
                sum[name, default: DeviceTwinCounters()].accepted += d.accepted
                for (r, n) in d.dropped { sum[name, default: DeviceTwinCounters()].dropped[r, default: 0] += n }
            }
        }
        var out: [MetricSample] = []
        for name in devices.sorted() {
            let d = sum[name] ?? DeviceTwinCounters()
            let dl = [("device", name)]
            out.append(.counter(name: "tibet_twin_device_twin_lines_accepted_total", help: "Twin lines accepted for the device",
                                labels: dl, total: d.accepted))
            for reason in TwinDropReason.allCases {
                guard let n = d.dropped[reason], n > 0 else { continue }
                out.append(.counter(name: "tibet_twin_device_twin_lines_dropped_total", help: "Twin lines for the device dropped, by reason",
                                    labels: dl + [("reason", reason.rawValue)], total: n))
            }
        }
        return out
    }
}
