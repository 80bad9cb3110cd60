import NIOSSL
import Platform
import TibetTwin

/// A twin feed setting that cannot be used at start-up (a TLS file missing, unreadable or not
/// what it should be). Reads `file:line:col: twin.feeds[i].tls.key: message`, pointing at the
/// config line that named the file.
package struct TwinFeedConfigError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The file and where the config named it.
    package var file: ApplianceConfig.ConfiguredPath
    package var message: String

    package init(file: ApplianceConfig.ConfiguredPath, message: String) {
        self.file = file
        self.message = message
    }

    package var description: String { "\(file): \(message)" }
}

/// The TLS side of a TCP twin feed (docs/twin-feed.md, "TLS"): the listener's certificate and
/// key, and the CA whose signature a client certificate must carry. A client without such a
/// certificate fails the handshake; nothing it sends is read. TLS 1.2 or later.
///
/// Loaded once at start-up from the PEM files the config names, so a bad file stops the start
/// with an error naming the config line, instead of surfacing at the first connection.
package final class TwinFeedTLS: Sendable, Hashable {
    /// The files it was loaded from.
    package let files: ApplianceConfig.FeedTLS
    /// The server context every connection of the feed uses.
    let context: NIOSSLContext

    /// PEM files larger than this are refused (a certificate chain is a few KiB).
    static let fileLimit = 1 << 20

    /// Reads and checks the three files; the error names the first that is missing or bad.
    package init(_ files: ApplianceConfig.FeedTLS) throws(TwinFeedConfigError) {
        let chain = try Self.certificates(files.cert, what: "certificate")
        let key = try Self.privateKey(files.key)
        let roots = try Self.certificates(files.clientCA, what: "CA certificate")
        var c = TLSConfiguration.makeServerConfigurationWithMTLS(
            certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key), trustRoots: .certificates(roots))
        c.minimumTLSVersion = .tlsv12
        // makeServerConfigurationWithMTLS verifies client certificates without a host name, and
        // a client that sends none fails the handshake (SSL_VERIFY_FAIL_IF_NO_PEER_CERT).
        do {
            context = try NIOSSLContext(configuration: c)
        } catch {
            throw TwinFeedConfigError(file: files.key, message: "cannot set up TLS with \(files.cert.path) and \(files.key.path) (does the key belong to the certificate?): \(error)")
        }
        self.files = files
    }

    static func read(_ f: ApplianceConfig.ConfiguredPath) throws(TwinFeedConfigError) -> [UInt8] {
        do {
            return try SystemCall.readFile(f.path, limit: fileLimit)
        } catch {
            let why: String
            switch error {
            case .open(let e): why = "cannot open \(f.path): \(e.meaningFirst)" + PathAccess.hint(e, path: f.path)
            case .errno(let e): why = "cannot read \(f.path): \(e.meaningFirst)"
            case .tooLarge(let limit): why = "\(f.path) is larger than \(limit) bytes; expected a PEM file"
            }
            throw TwinFeedConfigError(file: f, message: why)
        }
    }

    static func certificates(_ f: ApplianceConfig.ConfiguredPath, what: String) throws(TwinFeedConfigError) -> [NIOSSLCertificate] {
        let bytes = try read(f)
        let certs: [NIOSSLCertificate]
        do {
            certs = try NIOSSLCertificate.fromPEMBytes(bytes)
        } catch {
            throw TwinFeedConfigError(file: f, message: "\(f.path) is not a PEM \(what) file: \(error)")
        }
        guard !certs.isEmpty else {
            throw TwinFeedConfigError(file: f, message: "\(f.path) holds no PEM \(what) (expected -----BEGIN CERTIFICATE-----)")
        }
        return certs
    }

    /// The server's private key: refused if group or others may read it (like the audit key),
    /// because whoever reads it can pose as this appliance to the twin.
    static func privateKey(_ f: ApplianceConfig.ConfiguredPath) throws(TwinFeedConfigError) -> NIOSSLPrivateKey {
        if KeyFiles.isExposed(path: f.path) {
            throw TwinFeedConfigError(file: f, message: "\(f.path) can be read by group or others; a TLS private key must be mode 0600 or stricter (chmod 600, owned by the service user)")
        }
        let bytes = try read(f)
        do {
            return try NIOSSLPrivateKey(bytes: bytes, format: .pem)
        } catch {
            throw TwinFeedConfigError(file: f, message: "\(f.path) is not an unencrypted PEM private key: \(error)")
        }
    }

    package static func == (a: TwinFeedTLS, b: TwinFeedTLS) -> Bool { a === b }
    package func hash(into h: inout Hasher) { h.combine(ObjectIdentifier(self)) }
}
