import Foundation
import Logging
import Modbus
import Platform
import ServiceLifecycle
import Synchronization
import TibetTwin
import UnixSignals

// The metrics page: every part's snapshot turned into Prometheus figures.

extension ApplianceRuntime {
    // MARK: Metrics

    func registerMetrics() {
        metrics.addSource { [weak self] in self?.pollerSamples() ?? [] }
        metrics.addSource { [twin] in Self.twinSamples(twin.counters) }
        metrics.addSource { [interlock] in Self.interlockSamples(interlock.counters()) }
        metrics.addSource { [audit] in Self.auditSamples(audit.stats) }
        if let publisher { metrics.addSource { Self.publisherSamples(publisher.snapshot) } }
        metrics.addDeviceSource { [weak self] status in self?.deviceSamples(status) ?? [] }
    }

    /// Per-device poll and twin-line series for the devices of the maps in force.
    func deviceSamples(_ status: StatusSnapshot?) -> [MetricSample] {
        let (live, retired, loaded) = state.withLock { ($0.poller, $0.retiredPolls, $0.loaded) }
        let devices = Set(status?.devices.map(\.device) ?? loaded.maps.map(\.device))
        return DeviceMetrics.pollSamples(live.stats(), retired: retired, devices: devices)
            + DeviceMetrics.twinSamples(twin.counters, devices: devices)
    }

    func pollerSamples() -> [MetricSample] {
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
        var jitter = retired.jitter
        jitter.merge(now.jitter)
        func histogram(_ name: String, _ help: String, _ h: PollLatencyHistogram) -> MetricSample {
            var cumulative: [UInt64] = []
            var running = 0
            for c in h.counts.dropLast() {
                running += c
                cumulative.append(UInt64(running))
            }
            return .histogram(name: name, help: help, labels: [], bounds: PollLatencyHistogram.boundsUs.map { Double($0) / 1e6 },
                              counts: cumulative, sum: Double(h.sumNs) / 1e9, count: UInt64(h.count))
        }
        samples.append(histogram("tibet_twin_poll_latency_seconds", "Poll duration, request to last answer", latency))
        samples.append(histogram("tibet_twin_poll_jitter_seconds", "How late each poll started after its slot", jitter))
        return samples
    }

    /// The permit publisher's messages, refused commands and connection (`publish:`).
    static func publisherSamples(_ c: PermitPublisherCounters) -> [MetricSample] {
        let broker = ("broker", c.broker)
        var out: [MetricSample] = [
            .gauge(name: "tibet_twin_publish_connected", help: "1 while the permit publisher's broker connection is up",
                   labels: [broker], value: c.connected ? 1 : 0),
            .counter(name: "tibet_twin_publish_errors_total", help: "Permit publisher messages libmosquitto could not queue",
                     labels: [broker], total: c.publishErrors),
            .counter(name: "tibet_twin_publish_rebirths_total", help: "Sparkplug rebirth requests answered",
                     labels: [broker], total: c.rebirths),
        ]
        for kind in ["nbirth", "dbirth", "ddata", "ndata", "ndeath", "json"] {
            out.append(.counter(name: "tibet_twin_publish_messages_total", help: "Permit publisher messages sent, by kind",
                                labels: [broker, ("kind", kind)], total: c.published[kind] ?? 0))
        }
        for why in ["ncmd_write", "dcmd_write", "not_sparkplug"] {
            out.append(.counter(name: "tibet_twin_publish_commands_refused_total",
                                help: "Sparkplug commands to the permit publisher refused (writes), by reason",
                                labels: [broker, ("reason", why)], total: c.refused[why] ?? 0))
        }
        return out
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
            if c.source.hasPrefix("mqtt:") {
                out.append(.counter(name: "tibet_twin_twin_broker_outages_total",
                                    help: "MQTT feed outages (broker unreachable, refused, TLS, lost, subscription refused), each counted once",
                                    labels: [("source", c.source)], total: c.brokerLosses))
                out.append(.counter(name: "tibet_twin_twin_retained_messages_total", help: "MQTT messages delivered from the broker's retained store",
                                    labels: [("source", c.source)], total: c.retainedMessages))
            }
            for reason in TwinClientCloseReason.allCases {
                out.append(.counter(name: "tibet_twin_twin_clients_closed_total",
                                    help: "Twin feed connections refused at accept or closed by the appliance, by reason",
                                    labels: [("source", c.source), ("reason", reason.rawValue)], total: c.clientsClosed[reason] ?? 0))
            }
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
            .counterNs(name: "tibet_twin_audit_fsync_seconds_total", help: "Time spent in fdatasync",
                       labels: [], totalNs: UInt64(max(s.totalSyncNs, 0))),
            .gauge(name: "tibet_twin_audit_write_in_progress_seconds",
                   help: "How long the audit write or fdatasync in progress has been running (0 when idle): the durability lag",
                   labels: [], value: Double(s.busyNs) / 1e9),
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
