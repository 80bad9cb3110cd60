import Crypto
import TibetTwin

#if canImport(Glibc)
import Glibc
#endif

/// A key file that could not be written or read: which file, which call, errno, and why.
public struct KeyFileError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Kind: String, Sendable, Hashable {
        /// The output file exists already (`keygen` never overwrites a key).
        case exists
        case write
        case read
        /// The file does not hold a key in the project's text form.
        case invalid
    }

    public var kind: Kind
    public var path: String
    public var function: String
    public var errno: Int32?
    public var detail: String

    public init(kind: Kind, path: String, function: String, errno: Int32? = nil, detail: String) {
        self.kind = kind
        self.path = path
        self.function = function
        self.errno = errno
        self.detail = detail
    }

    public var description: String {
        var s = "\(path): \(detail)"
        if let errno { s += " (\(function): \(errnoText(errno)))" }
        return s
    }
}

/// Ed25519 key files in the project's text form (`KeyText`: one base64 line of the 32 raw
/// bytes). Used by `tibet-twin keygen`/`sign`, for twin keys named in maps, and for the guard's
/// audit signing key.
public enum KeyFiles {
    /// Writes a new key pair: `out` (the private key, mode 0600) and `out.pub` (the public key,
    /// mode 0644). Refuses when either file exists; never leaves a private key without its
    /// public half.
    @discardableResult
    public static func generate(out: String) throws(KeyFileError) -> Curve25519.Signing.PublicKey {
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
    public static func readPrivateKey(path: String) throws(KeyFileError) -> Curve25519.Signing.PrivateKey {
        let text = try readText(path: path)
        do { return try KeyText.privateKey(from: text) } catch {
            throw KeyFileError(kind: .invalid, path: path, function: "read", detail: "not a private key: \(error.reason)")
        }
    }

    /// Reads a public key file.
    public static func readPublicKey(path: String) throws(KeyFileError) -> Curve25519.Signing.PublicKey {
        let text = try readText(path: path)
        do { return try KeyText.publicKey(from: text) } catch {
            throw KeyFileError(kind: .invalid, path: path, function: "read", detail: "not a public key: \(error.reason)")
        }
    }

    /// Whether a private key file can be read by group or others (worth a warning).
    public static func isExposed(path: String) -> Bool {
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
        let bytes = Array(text.utf8)
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0 {
                if errno == EINTR { continue }
                let e = errno
                unlink(path)
                throw KeyFileError(kind: .write, path: path, function: "write", errno: e, detail: "cannot write")
            }
            done += n
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
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw KeyFileError(kind: .read, path: path, function: "read", errno: errno, detail: "cannot read the key file")
            }
            if n == 0 { break }
            out.append(contentsOf: chunk[0..<n])
            guard out.count <= 65_536 else {
                throw KeyFileError(kind: .invalid, path: path, function: "read", detail: "too large for a key file")
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// The twin keys the maps name.
public enum TwinKeys {
    /// Loads the `twin_key` of every map that names one, keyed by device; a relative path is
    /// relative to the map file's directory (`MapFiles.twinKeyPath(of:)`). Any unreadable or
    /// invalid key is an error: a device whose twin must sign never runs unsigned.
    public static func load(for maps: [DeviceMap]) throws(KeyFileError) -> [String: TwinPublicKey] {
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
    public convenience init(maps: [DeviceMap], sink: @escaping @Sendable (TwinState) -> Void) throws(KeyFileError) {
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
