/// How an `OPCUAClient` protects its secure channel: the security policy and mode, the
/// appliance's application instance certificate and private key, and the directory of server
/// certificates it trusts. One small value, so a configuration block maps onto it field by field:
/// `security: {policy: Basic256Sha256, mode: Sign|SignAndEncrypt, certificate: PATH,
/// private_key: PATH, trust_dir: PATH}`.
public struct OPCUASecurity: Sendable, Hashable {
    public enum Policy: String, Sendable, Hashable, CaseIterable {
        case none = "None"
        case basic256Sha256 = "Basic256Sha256"

        public var uri: String { "http://opcfoundation.org/UA/SecurityPolicy#" + rawValue }

        /// `None` or `Basic256Sha256` (case-insensitive), or the full policy URI.
        public init?(name: String) {
            let short = name.hasPrefix("http://opcfoundation.org/UA/SecurityPolicy#") ? String(name.split(separator: "#").last ?? "") : name
            guard let p = Self.allCases.first(where: { $0.rawValue.lowercased() == short.lowercased() }) else { return nil }
            self = p
        }
    }

    public enum Mode: String, Sendable, Hashable, CaseIterable {
        case none = "None"
        /// Every message signed; OpenSecureChannel also encrypted.
        case sign = "Sign"
        /// Every message signed and encrypted.
        case signAndEncrypt = "SignAndEncrypt"

        /// `None`, `Sign`, `SignAndEncrypt` (case-insensitive).
        public init?(name: String) {
            guard let m = Self.allCases.first(where: { $0.rawValue.lowercased() == name.lowercased() }) else { return nil }
            self = m
        }

        var messageSecurityMode: MessageSecurityMode {
            switch self {
            case .none: return .none
            case .sign: return .sign
            case .signAndEncrypt: return .signAndEncrypt
            }
        }
    }

    public var policy: Policy
    public var mode: Mode
    /// The appliance's application instance certificate (DER or PEM), `tibet-twin opcua cert`.
    public var certificatePath: String?
    /// Its private key (PEM or DER, PKCS#1 or PKCS#8).
    public var privateKeyPath: String?
    /// The server certificates trusted (DER or PEM files directly in it). A server certificate
    /// that is not there is refused and saved to `rejected/` in it.
    public var trustDirectory: String?

    public init(policy: Policy = .none, mode: Mode = .none, certificatePath: String? = nil, privateKeyPath: String? = nil,
                trustDirectory: String? = nil) {
        self.policy = policy
        self.mode = mode
        self.certificatePath = certificatePath
        self.privateKeyPath = privateKeyPath
        self.trustDirectory = trustDirectory
    }

    /// Security policy None: nothing signed or encrypted.
    public static let none = OPCUASecurity()

    public var isSecured: Bool { policy != .none }

    /// The first thing wrong with the combination, or nil: policy and mode are None together or
    /// not at all, and a secured channel needs certificate, key and trust directory.
    public var problem: String? {
        if (policy == .none) != (mode == .none) {
            return "security policy \(policy.rawValue) with mode \(mode.rawValue): policy and mode are None together or not at all"
        }
        guard policy != .none else { return nil }
        if certificatePath == nil { return "security \(policy.rawValue) needs the client certificate (certificate)" }
        if privateKeyPath == nil { return "security \(policy.rawValue) needs the client private key (private_key)" }
        if trustDirectory == nil { return "security \(policy.rawValue) needs a trust directory for server certificates (trust_dir)" }
        return nil
    }
}
