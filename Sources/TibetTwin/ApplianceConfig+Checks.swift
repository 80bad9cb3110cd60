import Yams

// What a config file is checked for beyond each value on its own (issue 17, item 7): where the
// keys that start-up errors name were written, and listeners or feeds that would collide when
// the appliance starts (two feeds on one TCP port or unix socket used to surface only as
// EADDRINUSE at bind, without a line; two feeds on one file read every line twice).

extension ApplianceConfig {
    /// The most `twin.feeds` entries a config may have.
    public static let maxFeeds = 32

    /// Where `keyPath` (`audit.key`, `twin.feeds[1].tcp`, …) was written; for a key that was
    /// left out (its default applies), where its nearest written parent was, else line 1.
    public func location(of keyPath: String) -> SourceLocation {
        var path = keyPath
        while true {
            if let l = keyLocations[path] { return l }
            guard let cut = path.lastIndex(where: { $0 == "." || $0 == "[" }) else { break }
            path = String(path[..<cut])
        }
        return SourceLocation(file: sourceFile, line: 1, column: 1)
    }
}

extension ConfigParser {
    /// The value of `key` in a mapping node, and the key's own node.
    private func entry(_ node: Node?, _ key: String) -> Node? {
        guard case .mapping(let m)? = node else { return nil }
        for (k, v) in m {
            if case .scalar(let s) = k, s.string == key { return v }
        }
        return nil
    }

    /// Records where the nested keys start-up errors name were written, and reports feeds and
    /// listeners that collide. Runs on a config whose values are each valid.
    func checkAcrossKeys(_ root: Node, _ config: inout ApplianceConfig) {
        func note(_ path: String, _ node: Node?) {
            if let node { config.keyLocations[path] = ctx.location(node) }
        }
        let interlock = entry(root, "interlock"), audit = entry(root, "audit"), http = entry(root, "http")
        note("interlock.listen", entry(interlock, "listen"))
        note("audit.dir", entry(audit, "dir"))
        note("audit.key", entry(audit, "key"))
        note("http.listen", entry(http, "listen"))

        // Listeners in config order, each with its key path and value node.
        var listeners: [(path: String, address: HostPort, node: Node?)] = [
            ("interlock.listen", config.interlock.listen, entry(interlock, "listen")),
            ("http.listen", config.http.listen, entry(http, "listen")),
        ]
        var paths: [(path: String, kind: String, file: String, node: Node?)] = []
        guard case .sequence(let items)? = entry(entry(root, "twin"), "feeds") else { return }
        // Each feed is a thread or an event loop and its descriptors; the checks below compare
        // feeds pairwise.
        if items.count > ApplianceConfig.maxFeeds {
            ctx.error(entry(entry(root, "twin"), "feeds"), "twin.feeds",
                      "\(items.count) feeds; at most \(ApplianceConfig.maxFeeds) (one listener or file serves any number of twin clients or devices)")
            return
        }
        for (i, (item, feed)) in zip(items, config.twin.feeds).enumerated() {
            let base = keyPath("twin.feeds", index: i)
            note(base, item)
            switch feed {
            case .tcp(let address, _):
                let node = entry(item, "tcp")
                note(keyPath(base, "tcp"), node)
                listeners.append((keyPath(base, "tcp"), address, node))
            case .unix(let path, _):
                let node = entry(item, "unix")
                note(keyPath(base, "unix"), node)
                paths.append((keyPath(base, "unix"), "unix socket", normalizedPath(path), node))
            case .mqtt:
                note(keyPath(base, "mqtt"), entry(item, "mqtt"))
            case .opcua:
                note(keyPath(base, "opcua"), entry(item, "opcua"))
            case .file(let path, _):
                let node = entry(item, "file")
                note(keyPath(base, "file"), node)
                paths.append((keyPath(base, "file"), "file", normalizedPath(path), node))
            }
        }
        for (j, later) in listeners.enumerated() {
            if let first = listeners[..<j].first(where: { overlaps($0.address, later.address) }) {
                ctx.error(later.node, later.path,
                          "\(later.address) collides with \(first.path) \(first.address) (first at \(ctx.location(first.node))): "
                          + "two listeners cannot share a port; give each its own")
            }
        }
        for (j, later) in paths.enumerated() {
            if let first = paths[..<j].first(where: { $0.file == later.file }) {
                ctx.error(later.node, later.path,
                          "\(later.file) is also \(first.path) (first at \(ctx.location(first.node))): "
                          + (later.kind == first.kind ? "each feed needs its own \(later.kind)" : "a feed file and a socket cannot share a path"))
            }
        }
    }

    /// Whether two listen addresses cannot both be bound: the same port (not 0, which the OS
    /// picks) on the same host, or on a wildcard that covers the other.
    private func overlaps(_ a: HostPort, _ b: HostPort) -> Bool {
        guard a.port == b.port, a.port != 0 else { return false }
        if a.host == b.host || a.host == "::" || b.host == "::" { return true }
        func isIPv6(_ h: String) -> Bool { h.contains(":") }
        if a.host == "0.0.0.0" { return !isIPv6(b.host) }
        if b.host == "0.0.0.0" { return !isIPv6(a.host) }
        return false
    }

    /// `a//b/./c/../d` → `a/b/d`: the same file written two ways is still the same file
    /// (symbolic links are not followed: the core reads no file system).
    private func normalizedPath(_ path: String) -> String {
        var parts: [Substring] = []
        for part in path.split(separator: "/", omittingEmptySubsequences: true) {
            if part == "." { continue }
            if part == "..", let last = parts.last, last != ".." {
                parts.removeLast()
                continue
            }
            parts.append(part)
        }
        let joined = parts.joined(separator: "/")
        return path.hasPrefix("/") ? "/" + joined : (joined.isEmpty ? "." : joined)
    }
}
