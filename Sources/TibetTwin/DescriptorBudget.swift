/// How many file descriptors a config and its maps can hold at once, at most, and whether that
/// fits below libmodbus's ceiling (docs/operations.md#how-many-devices-one-appliance-serves).
///
/// libmodbus waits for every answer with `select()`, which cannot watch a descriptor of 1024 or
/// more; the appliance therefore caps its own descriptor limit at 1024 (`DescriptorLimit`) and
/// refuses at start a config whose worst case does not fit, naming what takes how many — instead
/// of running until the 1,000th connection fails. Each PLC link (one TCP connection or serial
/// port, shared by every map that names it) is one descriptor; listeners count their clients at
/// their configured maximum.
public struct DescriptorBudget: Sendable, Hashable {
    /// One holder of descriptors.
    public struct Item: Sendable, Hashable {
        public var name: String
        public var count: Int
        /// What the count is made of.
        public var detail: String
    }

    /// The ceiling libmodbus's `select()` sets: descriptors 0 to 1023.
    public static let selectCeiling = 1024

    public let items: [Item]
    /// PLC links (distinct `PLCEndpoint.linkKey`s) and devices, for the advice.
    public let links: Int
    public let devices: Int

    /// The worst case of `config` with `maps`.
    public init(config: ApplianceConfig, maps: [DeviceMap]) {
        var items: [Item] = []
        let links = Set(maps.map(\.plc.linkKey)).count
        items.append(Item(name: "PLC links", count: links,
                          detail: "\(maps.count) devices on \(links) links, one connection or serial port each"))
        let il = config.interlock
        items.append(Item(name: "interlock server", count: 1 + il.maxClients + 2,
                          detail: "listener, max_clients \(il.maxClients), event loop 2"))
        items.append(Item(name: "HTTP API", count: 1 + Self.httpConnections + 3,
                          detail: "listener, \(Self.httpConnections) connections, event loop 3"))
        for feed in config.twin.feeds {
            switch feed {
            case .tcp(_, let access), .unix(_, let access):
                items.append(Item(name: "twin feed \(feed)", count: 1 + access.maxClients + 3,
                                  detail: "listener, max_clients \(access.maxClients), event loop 3"))
            case .file:
                items.append(Item(name: "twin feed \(feed)", count: 2, detail: "the file and its inotify watch"))
            case .mqtt:
                items.append(Item(name: "twin feed \(feed)", count: 3, detail: "broker connection, libmosquitto's wake-up pair"))
            case .opcua:
                items.append(Item(name: "twin feed \(feed)", count: 2, detail: "server connection, one while reconnecting"))
            }
        }
        items.append(Item(name: "audit", count: 3, detail: "segment, directory, key file while it is read"))
        items.append(Item(name: "process", count: Self.processBase,
                          detail: "stdin/stdout/stderr, log and systemd sockets, /proc and map files read, name look-ups"))
        self.items = items
        self.links = links
        self.devices = maps.count
    }

    /// Connections the HTTP API accepts at once (its fixed maximum).
    public static let httpConnections = 32
    /// What the process holds besides its subsystems, with room for reloads and look-ups.
    public static let processBase = 24

    /// The most descriptors the config can hold at once.
    public var total: Int { items.reduce(0) { $0 + $1.count } }

    /// nil when the worst case fits below `limit`; otherwise the start-up error, with the numbers.
    public func refusal(limit: Int) -> String? {
        guard total > limit else { return nil }
        let parts = items.filter { $0.count > 0 }.map { "\($0.name) \($0.count) (\($0.detail))" }
        var advice = "put devices that sit behind one gateway on its one link (the same plc host:port with their own unit ids, docs/register-maps.md), lower max_clients, or split the plant over several appliances, one per cell"
        if links > 0, total - links < limit {
            advice = "at most \(limit - (total - links)) PLC links fit; " + advice
        }
        return "this config can hold \(total) descriptors at once, more than the \(limit) libmodbus's select() allows "
            + "(descriptors 0–\(limit - 1)): " + parts.joined(separator: ", ") + ". " + advice
    }
}
