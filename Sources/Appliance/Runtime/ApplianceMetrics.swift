import Platform
import Prometheus
import Synchronization
import TibetTwin

/// One figure a part of the appliance exposes in its snapshot, in a neutral form the metrics
/// page understands. Counters are totals since the part started (a smaller total than last time
/// is taken as a restart of that part, e.g. after a reload).
package enum MetricSample: Sendable {
    case counter(name: String, help: String, labels: [(String, String)], total: UInt64)
    /// A counter of nanoseconds, exposed in seconds (`…_seconds_total`).
    case counterNs(name: String, help: String, labels: [(String, String)], totalNs: UInt64)
    case gauge(name: String, help: String, labels: [(String, String)], value: Double)
    /// `bounds` are the buckets' upper bounds (ascending, `+Inf` implied); `counts` the number of
    /// observations ≤ each bound (cumulative), `count` all observations, `sum` their sum.
    case histogram(name: String, help: String, labels: [(String, String)], bounds: [Double], counts: [UInt64],
                   sum: Double, count: UInt64)
}

/// The appliance's Prometheus metrics (`GET /metrics`).
///
/// The guard loop counts its own figures (decisions, permit changes, blocks by reason,
/// heartbeat) straight into swift-prometheus collectors; the other parts (poller, twin feeds,
/// interlock server, audit store) keep their own counters and expose snapshots, which are
/// turned into samples by `sources` at scrape time — no part pays for metrics on its hot path
/// beyond its own counters.
package final class ApplianceMetrics: Sendable {
    package let registry: PrometheusCollectorRegistry
    let decisions: Counter
    let rises: Counter
    let drops: Counter
    let blocks: [Counter]
    let heartbeatGauge: Gauge
    let permitsGauge: Gauge
    let intentsGauge: Gauge
    let devicesGauge: Gauge
    let healthyGauge: Gauge
    let ticks: Counter
    let reloadOK: Counter
    let reloadFailed: Counter
    let resets: Counter
    let noopResets: Counter
    let auditSubmitFailures: Counter
    let blockedNow: [Gauge]
    /// Snapshot counters: the collector and the last total seen.
    let synced = Mutex<[String: (Counter, UInt64)]>([:])
    let sources = Mutex<[@Sendable () -> [MetricSample]]>([])
    /// Sources of the per-device and per-intent series, handed the status snapshot of the
    /// scrape. Their samples are written as they are, not kept in the registry: a device a
    /// reload removed leaves no series behind, and every label value comes from the maps.
    let deviceSources = Mutex<[@Sendable (StatusSnapshot?) -> [MetricSample]]>([])

    package init() {
        let registry = PrometheusCollectorRegistry()
        self.registry = registry
        func d(_ name: String, _ unit: String, _ help: String) -> MetricNameDescriptor {
            MetricNameDescriptor(namespace: "tibet_twin", metricName: name, unitName: unit, helpText: help)
        }
        decisions = registry.makeCounter(descriptor: d("decisions", "total", "Intent evaluations by the guard loop"))
        rises = registry.makeCounter(descriptor: d("permit_changes", "total", "Permit changes published to the interlock"),
                                     labels: [("direction", "rise")])
        drops = registry.makeCounter(descriptor: d("permit_changes", "total", "Permit changes published to the interlock"),
                                     labels: [("direction", "drop")])
        blocks = ReasonCode.allCases.map {
            registry.makeCounter(descriptor: d("blocks", "total", "Permit drops, by the reason that blocked"),
                                 labels: [("reason", $0.name)])
        }
        blockedNow = ReasonCode.allCases.map {
            registry.makeGauge(descriptor: d("intents_blocked", "", "Intents blocked right now, by reason"),
                               labels: [("reason", $0.name)])
        }
        heartbeatGauge = registry.makeGauge(descriptor: d("heartbeat", "", "Heartbeat served in input register 0"))
        permitsGauge = registry.makeGauge(descriptor: d("permits", "", "Permit coils that are 1 right now"))
        intentsGauge = registry.makeGauge(descriptor: d("intents", "", "Intents (permit coils) configured"))
        devicesGauge = registry.makeGauge(descriptor: d("devices", "", "Devices configured"))
        healthyGauge = registry.makeGauge(descriptor: d("healthy", "", "Guard health served in input register 1 (1 = running and audit writable)"))
        ticks = registry.makeCounter(descriptor: d("guard_ticks", "total", "Evaluation ticks of the guard loop"))
        reloadOK = registry.makeCounter(descriptor: d("reloads", "total", "Config reloads (SIGHUP)"), labels: [("result", "ok")])
        reloadFailed = registry.makeCounter(descriptor: d("reloads", "total", "Config reloads (SIGHUP)"), labels: [("result", "refused")])
        resets = registry.makeCounter(descriptor: d("resets", "total", "Operator resets of latched intents"))
        noopResets = registry.makeCounter(descriptor: d("resets_noop", "total",
                                                        "Operator resets that found nothing latched (folded in the audit chain)"))
        auditSubmitFailures = registry.makeCounter(descriptor: d("audit_failures", "total", "Audit records the store did not make durable"))
    }

    /// Adds a snapshot source read at every scrape (the poller's, the feeds', …).
    package func addSource(_ source: @escaping @Sendable () -> [MetricSample]) {
        sources.withLock { $0.append(source) }
    }

    /// Adds a source of per-device series, read at every scrape with the status snapshot.
    package func addDeviceSource(_ source: @escaping @Sendable (StatusSnapshot?) -> [MetricSample]) {
        deviceSources.withLock { $0.append(source) }
    }

    /// Removes every snapshot source (before a reload re-adds them).
    package func removeSources() {
        sources.withLock { $0.removeAll() }
        deviceSources.withLock { $0.removeAll() }
    }

    // MARK: Guard loop figures

    package func countDecisions(_ n: Int) { decisions.increment(by: Int64(n)) }
    package func countRise() { rises.increment() }
    package func countDrop(reason: ReasonCode) {
        drops.increment()
        blocks[ReasonCode.allCases.firstIndex(of: reason)!].increment()
    }
    package func countTick(heartbeat: UInt16) {
        ticks.increment()
        heartbeatGauge.set(Int64(heartbeat))
    }
    package func countReload(ok: Bool) { (ok ? reloadOK : reloadFailed).increment() }
    package func countReset() { resets.increment() }
    package func countNoopReset() { noopResets.increment() }
    package func countAuditFailure() { auditSubmitFailures.increment() }

    /// The current table: permits up, intents and devices configured, blocked intents by reason.
    /// The permit table's totals; `blockedByCode[k]` is the number of intents blocked with the
    /// reason code whose raw value is k.
    package func setTable(permits: Int, intents: Int, devices: Int, healthy: Bool, blockedByCode: [Int]) {
        permitsGauge.set(Int64(permits))
        intentsGauge.set(Int64(intents))
        devicesGauge.set(Int64(devices))
        healthyGauge.set(Int64(healthy ? 1 : 0))
        for (i, r) in ReasonCode.allCases.enumerated() where r != .ok {
            let k = Int(r.rawValue)
            blockedNow[i].set(Int64(k < blockedByCode.count ? blockedByCode[k] : 0))
        }
    }

    // MARK: Exposition

    /// The Prometheus text exposition: the registry, then the histograms of the snapshots,
    /// then the per-device series built from `status` (none without it).
    package func render(status: StatusSnapshot? = nil) -> [UInt8] {
        let samples = sources.withLock { $0 }.flatMap { $0() }
        var histograms: [MetricSample] = []
        for s in samples {
            switch s {
            case .counter(let name, let help, let labels, let total):
                sync(counter: name, help: help, labels: labels, total: total, perUnit: 1)
            case .counterNs(let name, let help, let labels, let totalNs):
                sync(counter: name, help: help, labels: labels, total: totalNs, perUnit: 1e-9)
            case .gauge(let name, let help, let labels, let value):
                registry.makeGauge(descriptor: MetricNameDescriptor(metricName: name, unitName: "", helpText: help),
                                   labels: labels).set(value)
            case .histogram:
                histograms.append(s)
            }
        }
        var out = registry.emitToBuffer()
        var direct = histograms
        if let status { direct += DeviceMetrics.samples(status) }
        for source in deviceSources.withLock({ $0 }) { direct += source(status) }
        out += Array(Self.text(direct).utf8)
        return out
    }

    /// Samples written as text, each family once with its HELP and TYPE and all its samples
    /// together (the text format requires it), in the order the families first appear.
    static func text(_ samples: [MetricSample]) -> String {
        var order: [String] = []
        var families: [String: (help: String, type: String, lines: String)] = [:]
        func add(_ name: String, _ help: String, _ type: String, _ lines: String) {
            if families[name] == nil {
                order.append(name)
                families[name] = (help, type, "")
            }
            families[name]!.lines += lines
        }
        func labelText(_ labels: [(String, String)]) -> [String] { labels.map { "\($0.0)=\"\(escape($0.1))\"" } }
        func braces(_ l: [String]) -> String { l.isEmpty ? "" : "{\(l.joined(separator: ","))}" }
        for s in samples {
            switch s {
            case .counter(let name, let help, let labels, let total):
                add(name, help, "counter", "\(name)\(braces(labelText(labels))) \(total)\n")
            case .counterNs(let name, let help, let labels, let totalNs):
                add(name, help, "counter", "\(name)\(braces(labelText(labels))) \(number(Double(totalNs) / 1e9))\n")
            case .gauge(let name, let help, let labels, let value):
                add(name, help, "gauge", "\(name)\(braces(labelText(labels))) \(number(value))\n")
            case .histogram(let name, let help, let labels, let bounds, let counts, let sum, let count):
                let base = labelText(labels)
                var lines = ""
                for (b, c) in zip(bounds, counts) {
                    lines += "\(name)_bucket\(braces(base + ["le=\"\(number(b))\""])) \(c)\n"
                }
                lines += "\(name)_bucket\(braces(base + ["le=\"+Inf\""])) \(count)\n"
                lines += "\(name)_sum\(braces(base)) \(number(sum))\n\(name)_count\(braces(base)) \(count)\n"
                add(name, help, "histogram", lines)
            }
        }
        var out = ""
        for name in order {
            let f = families[name]!
            out += "# HELP \(name) \(f.help)\n# TYPE \(name) \(f.type)\n" + f.lines
        }
        return out
    }

    /// Brings a registry counter up to a part's `total` (in units of `perUnit`, e.g. 1e-9 for ns → s).
    func sync(counter name: String, help: String, labels: [(String, String)], total: UInt64, perUnit: Double) {
        let key = name + "|" + labels.map { "\($0.0)=\($0.1)" }.joined(separator: ",")
        synced.withLock { map in
            let counter: Counter
            let last: UInt64
            if let (c, l) = map[key] {
                counter = c
                last = l
            } else {
                counter = registry.makeCounter(descriptor: MetricNameDescriptor(metricName: name, unitName: "", helpText: help),
                                               labels: labels)
                last = 0
            }
            let delta = total >= last ? total - last : total  // smaller: the part restarted (reload)
            if delta > 0 {
                if perUnit == 1 {
                    counter.increment(by: Int64(clamping: delta))
                } else {
                    counter.increment(by: Double(delta) * perUnit)
                }
            }
            map[key] = (counter, total)
        }
    }

    static func number(_ d: Double) -> String {
        if d.isInfinite { return d > 0 ? "+Inf" : "-Inf" }
        if d.isNaN { return "NaN" }
        if d == d.rounded(), abs(d) < 1e15 { return String(Int64(d)) }
        return String(d)
    }

    static func escape(_ s: String) -> String {
        s.replacingAll("\\", with: "\\\\").replacingAll("\"", with: "\\\"").replacingAll("\n", with: "\\n")
    }
}

extension String {
    /// Every occurrence of `target` replaced (no Foundation).
    func replacingAll(_ target: Character, with replacement: String) -> String {
        var out = ""
        out.reserveCapacity(count)
        for c in self { if c == target { out += replacement } else { out.append(c) } }
        return out
    }
}
