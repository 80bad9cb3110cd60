import Crypto

#if canImport(Glibc)
import Glibc
#endif
import Foundation
import TibetTwin
import Platform

/// Reads register map files from disk: the file side of `MapLoader`, which is pure.
package enum MapFiles {
    /// Loads every map named by `paths` (files, or directories whose `*.yaml`/`*.yml` files are
    /// taken sorted by name — the device order of `maps layout`), fills in each map's SHA-256,
    /// checks that a `twin_key` file exists and holds a public key, and cross-checks the set.
    ///
    /// Every problem in every file is reported together; nothing is returned unless all is valid.
    package static func load(paths: [String]) throws(MapErrors) -> [DeviceMap] {
        var issues: [MapIssue] = []
        var maps: [DeviceMap] = []
        // Path by path, so issues come out in the order the paths were given.
        for path in paths {
            for file in mapFiles(in: [path], issues: &issues) {
                if let map = loadOne(file, issues: &issues) { maps.append(map) }
            }
        }
        // Cross-check what did load, even when other files failed: one run shows every problem.
        do {
            try MapLoader.crossCheck(maps)
        } catch {
            issues.append(contentsOf: error.issues)
        }
        if !issues.isEmpty { throw MapErrors(issues) }
        return maps
    }

    /// One file read, parsed, hashed and its twin key checked; nil (with issues) if anything fails.
    static func loadOne(_ file: String, issues: inout [MapIssue]) -> DeviceMap? {
        let bytes: [UInt8]
        do {
            bytes = try readFile(file)
        } catch {
            issues.append(MapIssue(location: SourceLocation(file: file, line: 1, column: 1), keyPath: "",
                                   message: "cannot read: \(error.message)"))
            return nil
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            issues.append(MapIssue(location: SourceLocation(file: file, line: 1, column: 1), keyPath: "",
                                   message: "not UTF-8 text (a map file is YAML in UTF-8)"))
            return nil
        }
        do {
            var map = try MapLoader.parse(yaml: text, file: file)
            map.sha256 = SHA256.hash(data: bytes).map { String(format: "%02x", $0) }.joined()
            if let keyIssue = checkTwinKey(map) {
                issues.append(keyIssue)
                return nil
            }
            return map
        } catch {
            issues.append(contentsOf: error.issues)
            return nil
        }
    }

    /// The map files `paths` name, in load order: each path as given; a directory's `*.yaml` and
    /// `*.yml` files sorted by name. Missing paths and empty directories become issues.
    package static func mapFiles(in paths: [String], issues: inout [MapIssue]) -> [String] {
        var files: [String] = []
        let fm = FileManager.default
        for path in paths {
            // stat, not FileManager.fileExists: a path this process may not reach (EACCES) is not
            // a missing one, and the message must say which.
            var st = stat()
            guard stat(path, &st) == 0 else {
                let e = Errno.current
                issues.append(MapIssue(location: SourceLocation(file: path, line: 1, column: 1), keyPath: "",
                                       message: PathAccess.explain(e, path: path)))
                continue
            }
            if st.st_mode & S_IFMT != S_IFDIR {
                files.append(path)
                continue
            }
            guard let names = try? fm.contentsOfDirectory(atPath: path) else {
                // Why it cannot be listed, from opendir itself.
                let e: Errno = opendir(path).map { closedir($0); return Errno(EIO) } ?? Errno.current
                issues.append(MapIssue(location: SourceLocation(file: path, line: 1, column: 1), keyPath: "",
                                       message: "cannot list the directory: \(PathAccess.explain(e, path: path + "/."))"))
                continue
            }
            let yaml = names.filter { ($0.hasSuffix(".yaml") || $0.hasSuffix(".yml")) && !$0.hasPrefix(".") }
                .sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
            if yaml.isEmpty {
                issues.append(MapIssue(location: SourceLocation(file: path, line: 1, column: 1), keyPath: "",
                                       message: "no *.yaml or *.yml map files in this directory"))
            }
            let dir = path.hasSuffix("/") ? path : path + "/"
            files.append(contentsOf: yaml.map { dir + $0 })
        }
        return files
    }

    /// The `twin_key` path of a map resolved against the map file's directory.
    package static func twinKeyPath(of map: DeviceMap) -> String? {
        guard let key = map.twinKey else { return nil }
        if key.hasPrefix("/") { return key }
        let dir = (map.sourceFile as NSString).deletingLastPathComponent
        return dir.isEmpty ? key : (dir as NSString).appendingPathComponent(key)
    }

    /// An issue if the map's `twin_key` cannot be read or is not an Ed25519 public key.
    static func checkTwinKey(_ map: DeviceMap) -> MapIssue? {
        guard let path = twinKeyPath(of: map) else { return nil }
        let location = map.keyLocations["twin_key"] ?? SourceLocation(file: map.sourceFile, line: 1, column: 1)
        let text: String
        do {
            text = String(decoding: try readFile(path), as: UTF8.self)
        } catch {
            return MapIssue(location: location, keyPath: "twin_key", message: "cannot read \(path): \(error.message)")
        }
        do {
            _ = try KeyText.publicKey(from: text)
        } catch {
            return MapIssue(location: location, keyPath: "twin_key",
                            message: "\(path) is not an Ed25519 public key (expected the .pub file of `tibet-twin keygen`)")
        }
        return nil
    }

    struct ReadError: Error {
        var message: String
    }

    /// The bytes of a regular file, read with POSIX calls; errors name the errno
    /// (`ENOENT: no such file or directory`, `EISDIR: is a directory`, `EACCES: permission denied
    /// (uid 999 may not search /etc/tibet-twin)` …). Files over 16 MiB are refused: no map or key is that large.
    /// Opened without blocking: a FIFO (or a device) in the maps' place must be refused as not
    /// a regular file, not hang `maps validate` or the start waiting for a writer.
    static func readFile(_ path: String) throws(ReadError) -> [UInt8] {
        let fd: Int32
        do { fd = try SystemCall.open(path, O_RDONLY | O_NONBLOCK) } catch {
            throw ReadError(message: PathAccess.explain(error, path: path))
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw ReadError(message: describeErrno(errno)) }
        guard (st.st_mode & S_IFMT) != S_IFDIR else { throw ReadError(message: Errno(EISDIR).colonForm) }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw ReadError(message: "not a regular file") }
        let limit = 16 << 20
        guard Int(st.st_size) <= limit else { throw ReadError(message: "larger than 16 MiB") }
        do {
            return try SystemCall.readAll(fd, limit: limit)
        } catch {
            switch error {
            case .tooLarge: throw ReadError(message: "larger than 16 MiB")
            case .errno(let e), .open(let e): throw ReadError(message: describeErrno(e.rawValue))
            }
        }
    }

    /// `ENOENT: no such file or directory`.
    static func describeErrno(_ e: Int32) -> String { Errno(e).colonForm }
}
