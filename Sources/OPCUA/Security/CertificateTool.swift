import Crypto
import Foundation
import Platform
import SwiftASN1
import X509
import _CryptoExtras

/// Makes the appliance's OPC UA application instance certificate and trusts server
/// certificates: what `tibet-twin opcua cert` and `opcua trust` do.
public enum OPCUACertificateTool {
    /// What `makeCertificate` wrote.
    public struct Made: Sendable, Hashable {
        public var certificateDER: String
        public var certificatePEM: String
        public var privateKeyPEM: String
        public var applicationUri: String
        /// SHA-1 of the DER certificate, hex: what the server's operator compares.
        public var thumbprint: String
    }

    /// A failure with the path and what went wrong.
    public struct Failure: Error, Sendable, Hashable, CustomStringConvertible {
        public var description: String
        init(_ d: String) { description = d }
    }

    public static let certificateFile = "cert.der"
    public static let certificatePEMFile = "cert.pem"
    public static let privateKeyFile = "key.pem"

    /// A self-signed RSA 2048 / SHA-256 application instance certificate in `directory`
    /// (`cert.der`, `cert.pem`, `key.pem` with mode 0600): subjectAltName URI `applicationUri` and
    /// DNS `host`; keyUsage digitalSignature, nonRepudiation, keyEncipherment, dataEncipherment
    /// (and keyCertSign, as self-signed OPC UA certificates carry); extendedKeyUsage serverAuth
    /// and clientAuth. Refuses to overwrite existing files unless `force`.
    public static func makeCertificate(directory: String, applicationUri: String, host: String, validityDays: Int = 3650,
                                       force: Bool = false, now: Date = Date()) throws(Failure) -> Made {
        let fm = FileManager.default
        let paths = [certificateFile, certificatePEMFile, privateKeyFile].map { (directory as NSString).appendingPathComponent($0) }
        if !force, let existing = paths.first(where: { fm.fileExists(atPath: $0) }) {
            throw Failure("\(existing) exists; the appliance's certificate is not replaced unless asked (--force): servers that trust the old one would refuse the new one")
        }
        guard validityDays > 0, validityDays <= 36_500 else { throw Failure("validity of \(validityDays) days: 1…36500") }
        do {
            try fm.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            let key = try _RSA.Signing.PrivateKey(keySize: .bits2048)
            let certKey = Certificate.PrivateKey(key)
            let name = try DistinguishedName {
                CommonName("tibet-twin@\(host)")
                OrganizationName("tibet-twin")
            }
            let extensions = try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true, nonRepudiation: true, keyEncipherment: true, dataEncipherment: true, keyCertSign: true))
                try ExtendedKeyUsage([.serverAuth, .clientAuth])
                SubjectAlternativeNames([.uniformResourceIdentifier(applicationUri), .dnsName(host)])
                SubjectKeyIdentifier(hash: certKey.publicKey)
            }
            let cert = try Certificate(version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: certKey.publicKey,
                                       notValidBefore: now.addingTimeInterval(-3600), notValidAfter: now.addingTimeInterval(Double(validityDays) * 86_400),
                                       issuer: name, subject: name, signatureAlgorithm: .sha256WithRSAEncryption,
                                       extensions: extensions, issuerPrivateKey: certKey)
            var serializer = DER.Serializer()
            try serializer.serialize(cert)
            let der = serializer.serializedBytes
            // The key first, created 0600 before a byte of it is written.
            try? fm.removeItem(atPath: paths[2])
            guard fm.createFile(atPath: paths[2], contents: Data(key.pkcs8PEMRepresentation.utf8), attributes: [.posixPermissions: 0o600]) else {
                throw Failure("\(paths[2]) cannot be written (\(Errno.current))")
            }
            try Data(der).write(to: URL(fileURLWithPath: paths[0]))
            try Data(try cert.serializeAsPEM().pemString.utf8).write(to: URL(fileURLWithPath: paths[1]))
            return Made(certificateDER: paths[0], certificatePEM: paths[1], privateKeyPEM: paths[2], applicationUri: applicationUri,
                        thumbprint: UACrypto.hex(UACrypto.sha1(der)))
        } catch let f as Failure {
            throw f
        } catch {
            throw Failure("making the certificate in \(directory) failed: \(error)")
        }
    }

    /// Copies a server certificate (DER or PEM) into the trust directory as DER, named by its
    /// thumbprint; returns the path written and the certificate's subject.
    public static func trust(certificate path: String, trustDirectory: String) throws(Failure) -> (path: String, subject: String, thumbprint: String) {
        guard let data = FileManager.default.contents(atPath: path) else { throw Failure("\(path) cannot be read (\(Errno.current))") }
        let der: [UInt8]
        let cert: Certificate
        do { (der, cert) = try UAFiles.parseCertificate(Array(data)) } catch {
            throw Failure("\(path) is not an X.509 certificate (DER or PEM): \(error)")
        }
        let thumb = UACrypto.hex(UACrypto.sha1(der))
        let target = (trustDirectory as NSString).appendingPathComponent("server-\(thumb.prefix(16)).der")
        do {
            try FileManager.default.createDirectory(atPath: trustDirectory, withIntermediateDirectories: true)
            try Data(der).write(to: URL(fileURLWithPath: target))
        } catch {
            throw Failure("\(target) cannot be written: \(error)")
        }
        return (target, cert.subject.description, thumb)
    }
}
