/// A Sparkplug B topic (Sparkplug 3.0, chapter 4): `spBv1.0/GROUP/TYPE/NODE[/DEVICE]`, or the
/// host application's `spBv1.0/STATE/HOST`.
public struct SparkplugTopic: Sendable, Hashable, CustomStringConvertible {
    public enum MessageType: String, Sendable, Hashable, CaseIterable {
        case nbirth = "NBIRTH", ndeath = "NDEATH", dbirth = "DBIRTH", ddeath = "DDEATH"
        case ndata = "NDATA", ddata = "DDATA", ncmd = "NCMD", dcmd = "DCMD"
    }

    public static let namespace = "spBv1.0"

    public var group: String
    public var type: MessageType
    public var node: String
    /// Set for the D… types, nil for the N… types.
    public var device: String?

    public init(group: String, type: MessageType, node: String, device: String? = nil) {
        self.group = group
        self.type = type
        self.node = node
        self.device = device
    }

    /// Parses a topic; nil for anything that is not a Sparkplug B edge topic (STATE included).
    public init?(_ topic: String) {
        let parts = topic.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 4 || parts.count == 5, parts[0] == Self.namespace,
              let type = MessageType(rawValue: String(parts[2])), !parts[1].isEmpty, !parts[3].isEmpty else { return nil }
        let isDevice = type == .dbirth || type == .ddeath || type == .ddata || type == .dcmd
        guard isDevice == (parts.count == 5) else { return nil }
        if isDevice, parts[4].isEmpty { return nil }
        self.init(group: String(parts[1]), type: type, node: String(parts[3]), device: isDevice ? String(parts[4]) : nil)
    }

    public var description: String {
        [Self.namespace, group, type.rawValue, node] .joined(separator: "/") + (device.map { "/\($0)" } ?? "")
    }

    /// The host application's STATE topic (Sparkplug 3.0: `spBv1.0/STATE/<host_id>`).
    public static func state(hostId: String) -> String { "\(namespace)/STATE/\(hostId)" }
}

/// An edge node: its group and node id.
public struct SparkplugNodeKey: Sendable, Hashable, CustomStringConvertible {
    public var group: String
    public var node: String
    public init(group: String, node: String) {
        self.group = group
        self.node = node
    }
    public var description: String { "\(group)/\(node)" }
}
