import Crypto
import Foundation
import Platform
import SwiftASN1
import X509
import _CryptoExtras

/// The appliance's application instance certificate and private key, loaded for one channel.
struct UALocalIdentity: @unchecked Sendable {
    let certificateDER: [UInt8]
    let certificate: Certificate
    let signingKey: _RSA.Signing.PrivateKey
    let decryptionKey: _RSA.Encryption.PrivateKey
    /// The first URI in the certificate's subjectAltName: the client's application URI.
    let applicationUri: String?
    var keyBytes: Int { signingKey.keySizeInBits / 8 }
    var thumbprint: [UInt8] { UACrypto.sha1(certificateDER) }

    /// Loads and cross-checks certificate and key (the key must belong to the certificate).
    static func load(certificatePath: String, privateKeyPath: String) throws(OPCUAError) -> UALocalIdentity {
        func refuse(_ why: String) -> OPCUAError { OPCUAError(.securityCheckFailed(why), operation: "load client certificate") }
        let certBytes = try UAFiles.read(certificatePath, "client certificate")
        let keyBytes = try UAFiles.read(privateKeyPath, "client private key")
        let der: [UInt8]
        let cert: Certificate
        do { (der, cert) = try UAFiles.parseCertificate(certBytes) } catch {
            throw refuse("client certificate \(certificatePath) does not parse as an X.509 certificate (DER or PEM): \(error)")
        }
        let key: _RSA.Signing.PrivateKey
        do {
            if let pem = String(bytes: keyBytes, encoding: .utf8), pem.contains("-----BEGIN") {
                key = try _RSA.Signing.PrivateKey(pemRepresentation: pem)
            } else {
                key = try _RSA.Signing.PrivateKey(derRepresentation: keyBytes)
            }
        } catch {
            throw refuse("client private key \(privateKeyPath) is not an RSA private key (PEM or DER, 2048 bits or more): \(error)")
        }
        guard let certKey = _RSA.Signing.PublicKey(cert.publicKey), certKey.derRepresentation == key.publicKey.derRepresentation else {
            throw refuse("client private key \(privateKeyPath) does not belong to the certificate \(certificatePath)")
        }
        let decryption: _RSA.Encryption.PrivateKey
        do { decryption = try _RSA.Encryption.PrivateKey(derRepresentation: key.derRepresentation) } catch {
            throw refuse("client private key \(privateKeyPath): \(error)")
        }
        let uri = (try? cert.extensions.subjectAlternativeNames)??.compactMap { name -> String? in
            if case .uniformResourceIdentifier(let u) = name { return u }
            return nil
        }.first
        return UALocalIdentity(certificateDER: der, certificate: cert, signingKey: key, decryptionKey: decryption, applicationUri: uri)
    }
}

/// A server's certificate, as it came in an endpoint description.
struct UARemoteCertificate: @unchecked Sendable {
    let der: [UInt8]
    let certificate: Certificate
    let verifyKey: _RSA.Signing.PublicKey
    let encryptionKey: _RSA.Encryption.PublicKey
    var keyBytes: Int { verifyKey.keySizeInBits / 8 }
    var thumbprint: [UInt8] { UACrypto.sha1(der) }

    init(der: [UInt8]) throws(UASecurityFault) {
        let cert: Certificate
        do { cert = try Certificate(derEncoded: der) } catch { throw UASecurityFault("the server certificate does not parse: \(error)") }
        guard let key = _RSA.Signing.PublicKey(cert.publicKey) else {
            throw UASecurityFault("the server certificate's key is not an RSA key (Basic256Sha256 needs RSA 2048–4096)")
        }
        let bits = key.keySizeInBits
        guard (2048...4096).contains(bits) else { throw UASecurityFault("the server certificate's RSA key has \(bits) bits; Basic256Sha256 needs 2048–4096") }
        let enc: _RSA.Encryption.PublicKey
        do { enc = try _RSA.Encryption.PublicKey(derRepresentation: key.derRepresentation) } catch {
            throw UASecurityFault("the server certificate's RSA key: \(error)")
        }
        self.der = der
        certificate = cert
        verifyKey = key
        encryptionKey = enc
    }

    var applicationUris: [String] {
        ((try? certificate.extensions.subjectAlternativeNames) ?? nil)?.compactMap { name -> String? in
            if case .uniformResourceIdentifier(let u) = name { return u }
            return nil
        } ?? []
    }

    var thumbprintHex: String { UACrypto.hex(thumbprint) }
}

/// The trust directory: server certificates trusted, one file each (DER or PEM) directly in it;
/// refused ones are saved to `rejected/` inside it.
enum UATrustStore {
    /// Whether `der` is in `directory`; refuses (saving it to `rejected/`) when not, then checks
    /// validity and application URI. Every refusal says which check failed and what to do.
    static func check(_ cert: UARemoteCertificate, serverApplicationUri: String?, directory: String, now: Date = Date()) throws(OPCUAError) {
        func refuse(_ why: String) -> OPCUAError { OPCUAError(.securityCheckFailed(why), operation: "check server certificate") }
        let subject = cert.certificate.subject.description
        if !trusts(cert.der, directory: directory) {
            let rejected = (directory as NSString).appendingPathComponent("rejected")
            let path = (rejected as NSString).appendingPathComponent("server-\(cert.thumbprintHex.prefix(16)).der")
            var saved = true
            do {
                try FileManager.default.createDirectory(atPath: rejected, withIntermediateDirectories: true)
                try Data(cert.der).write(to: URL(fileURLWithPath: path))
            } catch { saved = false }
            var why = "the server certificate \"\(subject)\" (SHA-1 thumbprint \(cert.thumbprintHex)) is not trusted: it is not in the trust directory \(directory). "
            if saved {
                why += "It was saved to \(path). Compare its thumbprint with the one the server's operator reads off the server, then trust it: "
                    + "tibet-twin opcua trust \(path) --trust-dir \(directory)   (or: cp \(path) \(directory)/)"
            } else {
                why += "It could not be saved to \(rejected); get the server's certificate from its operator and copy it into \(directory)."
            }
            throw refuse(why)
        }
        if now < cert.certificate.notValidBefore {
            throw refuse("the server certificate \"\(subject)\" is trusted but not valid yet: validity check failed, valid from \(cert.certificate.notValidBefore) (check the clocks)")
        }
        if now > cert.certificate.notValidAfter {
            throw refuse("the server certificate \"\(subject)\" is trusted but expired: validity check failed, valid until \(cert.certificate.notValidAfter); the server needs a new certificate")
        }
        if let uri = serverApplicationUri, !uri.isEmpty, !cert.applicationUris.contains(uri) {
            throw refuse("the server certificate \"\(subject)\" is trusted but its application URI check failed: the server calls itself \(uri), "
                + "the certificate names \(cert.applicationUris.isEmpty ? "no URI" : cert.applicationUris.joined(separator: ", "))")
        }
    }

    static func trusts(_ der: [UInt8], directory: String) -> Bool {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return false }
        for name in names.sorted() {
            let path = (directory as NSString).appendingPathComponent(name)
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir), !isDir.boolValue,
                  let data = FileManager.default.contents(atPath: path) else { continue }
            if let (d, _) = try? UAFiles.parseCertificate(Array(data)), d == der { return true }
        }
        return false
    }
}

/// Files of certificates and keys.
enum UAFiles {
    static func read(_ path: String, _ what: String) throws(OPCUAError) -> [UInt8] {
        guard let data = FileManager.default.contents(atPath: path) else {
            let e = Errno.current
            throw OPCUAError(.securityCheckFailed("\(what) \(path) cannot be read (\(e))"), operation: "load \(what)")
        }
        return Array(data)
    }

    /// A certificate in DER or PEM: its DER bytes and the parsed certificate.
    static func parseCertificate(_ bytes: [UInt8]) throws -> ([UInt8], Certificate) {
        if let text = String(bytes: bytes, encoding: .utf8), text.contains("-----BEGIN CERTIFICATE-----") {
            let doc = try PEMDocument(pemString: text)
            return (doc.derBytes, try Certificate(derEncoded: doc.derBytes))
        }
        return (bytes, try Certificate(derEncoded: bytes))
    }
}
