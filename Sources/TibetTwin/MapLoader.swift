/// One problem found in a map or config file: `file:line:col: key.path: what (expected)`.
public struct MapIssue: Error, Sendable, Hashable, CustomStringConvertible {
    public var location: SourceLocation
    /// The key path, e.g. `registers[1].type`.
    public var keyPath: String
    public var message: String

    public init(location: SourceLocation, keyPath: String, message: String) {
        self.location = location
        self.keyPath = keyPath
        self.message = message
    }

    public var description: String {
        keyPath.isEmpty ? "\(location): \(message)" : "\(location): \(keyPath): \(message)"
    }
}

/// Every problem found in one or more files; a load reports all of them, not just the first.
public struct MapErrors: Error, Sendable, Hashable, CustomStringConvertible {
    public var issues: [MapIssue]
    public init(_ issues: [MapIssue]) { self.issues = issues }
    public var description: String { issues.map(\.description).joined(separator: "\n") }
}

/// Parses register maps (SPEC §3.2) from YAML text. Pure: the caller reads the files.
public enum MapLoader {
    /// Parses one map. `file` is the path used in error messages and `sourceFile`.
    public static func parse(yaml: String, file: String) throws(MapErrors) -> DeviceMap {
        throw MapErrors([MapIssue(location: SourceLocation(file: file, line: 1, column: 1), keyPath: "",
                                  message: "map parsing is not implemented yet")])
    }

    /// Checks a set of parsed maps against each other: unique device names, no coil claimed twice.
    public static func crossCheck(_ maps: [DeviceMap]) throws(MapErrors) {}
}
