import Crypto
import Foundation
import Platform
import TibetTwin

/// Problems that stop the appliance from starting (or a reload from being applied): one line
/// each, saying what and where.
package struct StartupError: Error, Sendable, Hashable, CustomStringConvertible {
    package var lines: [String]

    package init(_ lines: [String]) { self.lines = lines }
    package init(_ line: String) { self.lines = [line] }

    package var description: String { lines.joined(separator: "\n") }
}

/// A config file and everything it names, read and validated completely: the config itself,
/// the maps (in layout order), the interlock layout, the twins' public keys and the twin line
/// parser built from them. Built the same way at start and on SIGHUP, so a reload accepts
/// exactly what a start would.
package struct LoadedConfig: Sendable {
    package var config: ApplianceConfig
    package var maps: [DeviceMap]
    package var layout: InterlockLayout
    package var twinKeys: [String: TwinPublicKey]
    package var parser: TwinLineParser
    /// SHA-256 of the config file's bytes.
    package var configSHA256: String

    /// Reads and validates `path` and every map it names. Every problem is reported.
    package static func load(configPath path: String) throws(StartupError) -> LoadedConfig {
        // The errno, not a guess: a config in a directory the user may not traverse is EACCES,
        // not "no such file".
        let bytes: [UInt8]
        do { bytes = try MapFiles.readFile(path) } catch {
            throw StartupError("\(path): cannot read the config file: \(error.message)")
        }
        let data = Data(bytes)
        guard let text = String(data: data, encoding: .utf8) else {
            throw StartupError("\(path):1:1: not UTF-8 text (the config is YAML in UTF-8)")
        }
        let config: ApplianceConfig
        do {
            config = try ApplianceConfig.parse(yaml: text, file: path)
        } catch {
            throw StartupError(error.issues.map(\.description))
        }
        // A unix feed path that exists as anything but a socket would fail at bind with no line
        // to point at (a stale socket file is fine: it is replaced).
        var pathProblems: [String] = []
        for (i, feed) in config.twin.feeds.enumerated() {
            guard case .unix(let socketPath, _) = feed else { continue }
            var st = stat()
            guard lstat(socketPath, &st) == 0, st.st_mode & S_IFMT != S_IFSOCK else { continue }
            let what = switch st.st_mode & S_IFMT {
            case S_IFREG: "a regular file"
            case S_IFDIR: "a directory"
            case S_IFLNK: "a symbolic link"
            default: "not a socket"
            }
            pathProblems.append(config.startupLine("twin.feeds[\(i)].unix",
                "\(socketPath) exists and is \(what), not a socket: remove it or choose another path"))
        }
        if !pathProblems.isEmpty { throw StartupError(pathProblems) }
        let maps: [DeviceMap]
        do {
            maps = try MapFiles.load(paths: config.maps)
        } catch {
            throw StartupError(error.issues.map(\.description))
        }
        // A map bound to OPC UA with no opcua feed would never have a twin: say so at its line.
        if !config.twin.feeds.contains(where: { if case .opcua = $0 { true } else { false } }) {
            let unfed = maps.filter { $0.opcua != nil }.map { m in
                "\(m.keyLocations["twin"] ?? SourceLocation(file: m.sourceFile, line: 1, column: 1)): twin.opcua: "
                    + "\(m.device) is bound to OPC UA nodes, but the config has no opcua feed (twin.feeds: - opcua: {endpoint: …}): it could never have a twin"
            }
            if !unfed.isEmpty { throw StartupError(unfed) }
        }
        let layout: InterlockLayout
        do {
            layout = try InterlockLayout(maps: maps)
        } catch {
            throw StartupError(config.startupLine("maps", "\(error)"))
        }
        let keys: [String: TwinPublicKey]
        do {
            keys = try TwinKeys.load(for: maps)
        } catch {
            // Checked with the maps already; a key changed since then is named at its map's line.
            if let map = maps.first(where: { MapFiles.twinKeyPath(of: $0) == error.path }),
               let at = map.keyLocations["twin_key"] {
                throw StartupError("\(at): twin_key: \(error)")
            }
            throw StartupError("\(error)")
        }
        let parser: TwinLineParser
        do {
            parser = try TwinLineParser(maps: maps, keys: keys)
        } catch {
            throw StartupError("\(error)")
        }
        return LoadedConfig(config: config, maps: maps, layout: layout, twinKeys: keys, parser: parser,
                            configSHA256: Hex.encode(SHA256.hash(data: data)))
    }

    /// The interlock server's settings from `interlock:`.
    package var interlockConfig: InterlockConfig { InterlockConfig(config.interlock) }

    /// What `config_loaded` tokens record: the config file and each map's file and SHA-256.
    package var auditJSON: JSONValue {
        var maps: [String: JSONValue] = [:]
        for m in self.maps {
            maps[m.device] = .object(["file": .string(m.sourceFile), "sha256": .string(m.sha256),
                                      "profile": .string(m.profile.rawValue),
                                      "intents": .array(m.intents.map { .string($0.name) })])
        }
        return .object([
            "config_file": .string(config.sourceFile), "config_sha256": .string(configSHA256),
            "node": .string(config.node), "maps": .object(maps),
            "interlock_listen": .string(config.interlock.listen.description),
            "twin_feeds": .array(config.twin.feeds.map { .string($0.description) }),
        ])
    }

    /// Settings a reload cannot change in a running process (listeners, audit, node name):
    /// named here so the operator learns they wait for a restart.
    package func restartOnlyChanges(from old: LoadedConfig) -> [String] {
        var out: [String] = []
        if config.node != old.config.node { out.append("node") }
        if config.interlock != old.config.interlock { out.append("interlock") }
        if config.audit != old.config.audit { out.append("audit") }
        if config.http != old.config.http { out.append("http") }
        if config.twin != old.config.twin { out.append("twin.feeds") }
        if config.publish != old.config.publish { out.append("publish") }
        return out
    }
}

extension ApplianceConfig {
    /// A start-up problem as one line: `FILE:LINE:COL: key.path: message`, at the key that
    /// caused it (where its nearest parent was written when the key itself was left out).
    package func startupLine(_ keyPath: String, _ message: String) -> String {
        "\(location(of: keyPath)): \(keyPath): \(message)"
    }
}
