import Platform
import TibetTwin

/// The maps an appliance config file names (`maps:`), for commands that need only the maps,
/// such as `tibet-twin maps layout --config FILE`.
package enum ConfigMaps {
    /// Reads and parses the config at `configPath` and returns its map paths (resolved against
    /// the config file's directory). Problems come back in the map-error form
    /// `file:line:col: key: message`.
    package static func paths(configPath: String) throws(MapErrors) -> [String] {
        let bytes: [UInt8]
        do {
            bytes = try MapFiles.readFile(configPath)
        } catch {
            throw MapErrors([MapIssue(location: SourceLocation(file: configPath, line: 1, column: 1), keyPath: "",
                                      message: "cannot read: \(error.message)")])
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw MapErrors([MapIssue(location: SourceLocation(file: configPath, line: 1, column: 1), keyPath: "",
                                      message: "not UTF-8 text (the config is YAML in UTF-8)")])
        }
        return try ApplianceConfig.parse(yaml: text, file: configPath).maps
    }
}
