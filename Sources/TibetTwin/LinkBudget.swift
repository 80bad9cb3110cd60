/// The links of a set of maps, and whether each can carry its polls (docs/register-maps.md,
/// "Shared links"). Maps whose `plc` names the same serial port or the same TCP host and port
/// share one link: one connection, one request at a time. Pure: computed from the maps alone.
public struct LinkBudget: Sendable, Hashable {
    /// One link and its load.
    public struct Link: Sendable, Hashable {
        /// `PLCEndpoint.linkKey`.
        public var key: String
        /// `PLCEndpoint.linkName`, plus the line settings for a serial port.
        public var name: String
        /// The devices on it, in map order.
        public var devices: [String]
        /// Requests per second all its devices ask for.
        public var requestsPerSecond: Double
        /// Seconds of link time per second the polls need (1 = the link is never idle); nil
        /// when it cannot be computed (a TCP link with no measured `rtt_ms`).
        public var load: Double?
        /// Why `load` is nil.
        public var unknownBecause: String?
        /// Where the link's first map names it, for errors.
        public var location: SourceLocation

        /// Whether the polls fit (load ≤ 1; an unknown load is not refused).
        public var fits: Bool { (load ?? 0) <= 1 }

        /// The report line `maps validate` prints.
        public var summary: String {
            let units = devices.count == 1 ? "1 device" : "\(devices.count) devices"
            var line = "link \(name): \(units), \(Self.fmt(requestsPerSecond)) requests/s"
            if let load {
                line += ", busy \(Self.fmt(load * 100)) %"
                line += load <= 1 ? " (fits)" : " (over budget by \(Self.fmt((load - 1) * 100)) %)"
            } else if let unknownBecause {
                line += ", load cannot be computed: \(unknownBecause)"
            }
            return line
        }

        static func fmt(_ d: Double) -> String {
            d >= 100 ? String(Int(d.rounded())) : String((d * 10).rounded() / 10)
        }
    }

    public var links: [Link]

    /// Bits per character on a Modbus RTU line, for the budget: the standard's 11 (start, 8
    /// data, parity or a second stop bit, stop). 8N1 lines send 10; the budget keeps 11.
    public static let bitsPerCharacter = 11.0

    /// The links of `maps`, each with its load.
    public init(maps: [DeviceMap]) {
        var order: [String] = []
        var byKey: [String: [DeviceMap]] = [:]
        for m in maps {
            let k = m.plc.linkKey
            if byKey[k] == nil { order.append(k) }
            byKey[k, default: []].append(m)
        }
        links = order.map { Self.link(byKey[$0]!) }
    }

    static func link(_ maps: [DeviceMap]) -> Link {
        let first = maps[0]
        var requests = 0.0
        var busy = 0.0
        var unknown: String?
        let serial = first.plc.serial
        let rtt = maps.compactMap(\.plc.rttMs).max()
        for m in maps {
            let plan = ReadPlan(map: m)
            let perSecond = 1000 / Double(max(m.plc.pollMs, 1))
            requests += Double(plan.groups.count) * perSecond
            if let serial {
                busy += plan.groups.reduce(0) { $0 + requestSeconds($1, serial: serial) } * perSecond
            } else if let rtt {
                busy += Double(plan.groups.count) * rtt / 1000 * perSecond
            }
        }
        if serial == nil && rtt == nil {
            unknown = "no plc.rtt_ms (measure the round trip with tibet-twin read and write it into the maps)"
        }
        var name = first.plc.linkName
        if let serial { name += " \(serial.lineSettings)" }
        return Link(key: first.plc.linkKey, name: name, devices: maps.map(\.device), requestsPerSecond: requests,
                    load: unknown == nil ? busy : nil, unknownBecause: unknown,
                    location: first.keyLocations["plc"] ?? SourceLocation(file: first.sourceFile, line: 1, column: 1))
    }

    /// Wire time of one read on a serial line: request (8 bytes) and answer (5 + data bytes)
    /// at `bitsPerCharacter` each, and the t3.5 silence after each of the two frames. The
    /// device's own turnaround is not known and not counted.
    public static func requestSeconds(_ g: ReadPlan.Group, serial: SerialLine) -> Double {
        let data = g.table.isBitTable ? (g.count + 7) / 8 : 2 * g.count
        let chars = Double(8 + 5 + data)
        let charSeconds = bitsPerCharacter / Double(serial.baud)
        let silence = serial.baud > 19200 ? 0.00175 : 3.5 * charSeconds
        return chars * charSeconds + 2 * silence
    }

    /// One issue per link whose polls do not fit, saying by how much and what would fit.
    public var issues: [MapIssue] {
        links.filter { !$0.fits }.map { l in
            let load = l.load!
            return MapIssue(
                location: l.location, keyPath: "plc",
                message: "link \(l.name) cannot carry its polls: \(l.devices.count) devices (\(l.devices.joined(separator: ", "))) need \(Link.fmt(load * 1000)) ms of link time per second, \(Link.fmt((load - 1) * 100)) % more than it has; poll at least \(Link.fmt(load)) × less often (multiply every poll_ms on it by \(Link.fmt((load * 10).rounded(.up) / 10))), move devices to another link, or raise the baud rate")
        }
    }
}
