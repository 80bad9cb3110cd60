import Crypto
import Platform
import TibetTwin

#if canImport(Glibc)
import Glibc
#endif

/// A key file that could not be written or read: which file, which call, errno, and why.
package struct KeyFileError: Error, Sendable, Hashable, CustomStringConvertible {
    package enum Kind: String, Sendable, Hashable {
        /// The output file exists already (`keygen` never overwrites a key).
        case exists
        case write
        case read
        /// The file does not hold a key in the project's text form.
        case invalid
    }

    package var kind: Kind
    package var path: String
    package var function: String
    package var errno: Int32?
    package var detail: String

    package init(kind: Kind, path: String, function: String, errno: Int32? = nil, detail: String) {
        self.kind = kind
        self.path = path
        self.function = function
        self.errno = errno
        self.detail = detail
    }

    package var description: String {
        var s = "\(path): \(detail)"
        if let errno { s += ": " + PathAccess.explain(Errno(errno), path: path) }
        return s
    }
}

/// Ed25519 key files in the project's text form (`KeyText`: one base64 line of the 32 raw
/// bytes). Used by `tibet-twin keygen`/`sign`, for twin keys named in maps, and for the guard's
/// audit signing key.
package enum KeyFiles {
    /// Writes a new key pair: `out` (the private key, mode 0600) and `out.pub` (the public key,
    /// mode 0644). Refuses when either file exists; never leaves a private key without its
    /// public half.
    @discardableResult
    package static func generate(out: String) throws(KeyFileError) -> Curve25519.Signing.PublicKey {
        let pubPath = out + ".pub"
        for p in [out, pubPath] where access(p, F_OK) == 0 {
            throw KeyFileError(kind: .exists, path: p, function: "access", detail: "exists already; refusing to overwrite a key")
        }
        let key = Curve25519.Signing.PrivateKey()
        try writeNew(path: out, text: KeyText.text(of: key), mode: 0o600)
        do {
            try writeNew(path: pubPath, text: KeyText.text(of: key.publicKey), mode: 0o644)
        } catch {
            unlink(out)
            throw error
        }
        return key.publicKey
    }

    /// Reads a private key file.
    package static func readPrivateKey(path: String) throws(KeyFileError) -> Curve25519.Signing.PrivateKey {
        let text = try readText(path: path)
        do { return try KeyText.privateKey(from: text) } catch {
            throw KeyFileError(kind: .invalid, path: path, function: "read", detail: "not a private key: \(error.reason)")
        }
    }

    /// Reads a public key file.
    package static func readPublicKey(path: String) throws(KeyFileError) -> Curve25519.Signing.PublicKey {
        let text = try readText(path: path)
        do { return try KeyText.publicKey(from: text) } catch {
            throw KeyFileError(kind: .invalid, path: path, function: "read", detail: "not a public key: \(error.reason)")
        }
    }

    /// Whether a private key file can be read by group or others (worth a warning).
    package static func isExposed(path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && st.st_mode & 0o077 != 0
    }

    static func writeNew(path: String, text: String, mode: mode_t) throws(KeyFileError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
        guard fd >= 0 else {
            let e = errno
            throw KeyFileError(kind: e == EEXIST ? .exists : .write, path: path, function: "open", errno: e,
                               detail: e == EEXIST ? "exists already; refusing to overwrite a key" : "cannot create")
        }
        defer { close(fd) }
        // The umask may only have removed bits; make the mode exact.
        _ = fchmod(fd, mode)
        do {
            try SystemCall.writeAll(fd, Array(text.utf8))
        } catch {
            unlink(path)
            throw KeyFileError(kind: .write, path: path, function: "write", errno: error.errno.rawValue, detail: "cannot write")
        }
        guard fsync(fd) == 0 else {
            let e = errno
            unlink(path)
            throw KeyFileError(kind: .write, path: path, function: "fsync", errno: e, detail: "cannot write")
        }
    }

    static func readText(path: String) throws(KeyFileError) -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw KeyFileError(kind: .read, path: path, function: "open", errno: errno, detail: "cannot open the key file")
        }
        defer { close(fd) }
        let out: [UInt8]
        do {
            out = try SystemCall.readAll(fd, limit: 65_536)
        } catch {
            switch error {
            case .tooLarge:
                throw KeyFileError(kind: .invalid, path: path, function: "read", detail: "too large for a key file")
            case .errno(let e), .open(let e):
                throw KeyFileError(kind: .read, path: path, function: "read", errno: e.rawValue, detail: "cannot read the key file")
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// The twin keys the maps name.
package enum TwinKeys {
    /// Loads the `twin_key` of every map that names one, keyed by device; a relative path is
    /// relative to the map file's directory (`MapFiles.twinKeyPath(of:)`). Any unreadable or
    /// invalid key is an error: a device whose twin must sign never runs unsigned.
    package static func load(for maps: [DeviceMap]) throws(KeyFileError) -> [String: TwinPublicKey] {
        var keys: [String: TwinPublicKey] = [:]
        for m in maps {
            guard let path = MapFiles.twinKeyPath(of: m) else { continue }
            keys[m.device] = TwinPublicKey(try KeyFiles.readPublicKey(path: path))
        }
        return keys
    }
}

extension TwinFeedPipeline {
    /// A pipeline for loaded maps: reads every map's `twin_key` (see `TwinKeys.load`).
    package convenience init(maps: [DeviceMap], sink: @escaping @Sendable (TwinState) -> Void) throws(KeyFileError) {
        let keys = try TwinKeys.load(for: maps)
        let parser: TwinLineParser
        do {
            parser = try TwinLineParser(maps: maps, keys: keys)
        } catch {
            // Not reachable: `load` returns a key for every map that names one.
            throw KeyFileError(kind: .read, path: error.keyPath, function: "load", detail: error.description)
        }
        self.init(parser: parser, sink: sink)
    }
}
