import Crypto
import Platform
import Synchronization
import TibetTwin

/// How `POST /reset` is guarded (docs/operations.md#resets).
package struct ResetPolicy: Sendable {
    /// The bearer token a reset must present; nil: none is asked for (the config allows that
    /// only while `http.listen` is a loopback address).
    package var token: [UInt8]?
    /// `http.listen`'s host: a Host header naming it is accepted, as are loopback names; when it
    /// is a wildcard (`0.0.0.0`, `::`), any IP literal is.
    package var listenHost: String
    /// Resets accepted per second from one client address, and as a burst.
    package var perSecond: Int

    package init(token: [UInt8]? = nil, listenHost: String = "127.0.0.1", perSecond: Int = 5) {
        self.token = token
        self.listenHost = listenHost
        self.perSecond = perSecond
    }
}

/// Why a reset request was refused before it reached the guard loop.
package enum ResetRefusal: String, Sendable, CaseIterable {
    /// More than `perSecond` from one address (429).
    case rate
    /// A cross-origin `Origin` or `Sec-Fetch-Site` (403): a web page, not an operator.
    case origin
    /// A `Host` that is not this appliance's address or a loopback name (403): DNS rebinding.
    case host
    /// A body or content type other than none or `application/json` (415): what an HTML form
    /// or a no-preflight `fetch` sends.
    case contentType = "content_type"
    /// Missing or wrong `Authorization: Bearer` token (401).
    case auth
}

/// Decides whether a `POST /reset` may reach the guard loop: per-address rate limit, then
/// Host and Origin, then content type, then the bearer token. Counts what it refuses.
package final class ResetGate: Sendable {
    struct Bucket {
        var tokens: Double
        var lastNs: Int64
    }

    let policy: ResetPolicy
    /// SHA-256 of the token: the comparison runs over two 32-byte digests, so its time says
    /// nothing about the token's length or how much of it matched.
    let tokenDigest: [UInt8]?
    let buckets = Mutex<[String: Bucket]>([:])
    let refusals = Mutex<[ResetRefusal: UInt64]>([:])

    package init(policy: ResetPolicy) {
        self.policy = policy
        self.tokenDigest = policy.token.map { Array(SHA256.hash(data: $0)) }
    }

    package var authenticated: Bool { tokenDigest != nil }

    /// Refusals so far, by reason.
    package var counters: [ResetRefusal: UInt64] { refusals.withLock { $0 } }

    /// nil: the request may go on; otherwise the answer to give.
    package func check(_ req: HTTPRequest, nowNs: Int64 = monotonicNowNs()) -> HTTPResponse? {
        if let refusal = refusal(req, nowNs: nowNs) {
            refusals.withLock { $0[refusal, default: 0] += 1 }
            return Self.answer(refusal)
        }
        return nil
    }

    func refusal(_ req: HTTPRequest, nowNs: Int64) -> ResetRefusal? {
        if !admit(InterlockAuditor.host(of: req.remote), nowNs: nowNs) { return .rate }
        guard let host = req.header("Host"), hostAllowed(host) else { return .host }
        if let origin = req.header("Origin") {
            // Same origin only: what a page served by this API would send. `null` (sandboxed
            // frames, file: pages) and every other site are refused.
            let lower = origin.lowercased()
            guard lower.hasPrefix("http://"), String(lower.dropFirst(7)) == host.lowercased() else { return .origin }
        }
        if let site = req.header("Sec-Fetch-Site")?.lowercased(), site != "same-origin", site != "none" {
            return .origin
        }
        if let type = req.header("Content-Type") {
            let mime = type.split(separator: ";", maxSplits: 1).first.map { Self.trim($0) } ?? ""
            guard mime.lowercased() == "application/json" else { return .contentType }
        } else if !req.body.isEmpty {
            return .contentType
        }
        if let digest = tokenDigest {
            guard let given = Self.bearer(req.header("Authorization")),
                  Self.constantTimeEqual(Array(SHA256.hash(data: given)), digest) else { return .auth }
        }
        return nil
    }

    /// The Host header's host (`127.0.0.1:9102` → `127.0.0.1`, `[::1]:9102` → `::1`) must be
    /// a loopback name, the listen host, or (wildcard listen) an IP literal: never a DNS name
    /// an attacker's page could point at this machine.
    func hostAllowed(_ header: String) -> Bool {
        var h = Substring(header.lowercased())
        if h.hasPrefix("[") {
            guard let close = h.firstIndex(of: "]") else { return false }
            h = h[h.index(after: h.startIndex)..<close]
        } else if let colon = h.lastIndex(of: ":"), h.firstIndex(of: ":") == colon {
            h = h[..<colon]
        }
        let host = String(h)
        if ApplianceConfig.HTTP.isLoopback(host: host) { return true }
        let listen = policy.listenHost.lowercased()
        if host == listen { return true }
        if listen == "0.0.0.0" || listen == "::" { return IPAddress.parse(host) != nil }
        return false
    }

    /// A token bucket per client address: `perSecond` tokens, refilled continuously.
    func admit(_ address: String, nowNs: Int64) -> Bool {
        let rate = Double(policy.perSecond)
        return buckets.withLock { b in
            if b.count > 4096 {
                // Forget addresses whose bucket is full again: they are back where a new one starts.
                b = b.filter { Double(nowNs - $0.value.lastNs) / 1e9 * rate + $0.value.tokens < rate }
            }
            var bucket = b[address] ?? Bucket(tokens: rate, lastNs: nowNs)
            bucket.tokens = min(rate, bucket.tokens + Double(max(0, nowNs - bucket.lastNs)) / 1e9 * rate)
            bucket.lastNs = nowNs
            let ok = bucket.tokens >= 1
            if ok { bucket.tokens -= 1 }
            b[address] = bucket
            return ok
        }
    }

    /// `Bearer abc` → `abc` (the scheme is case-insensitive).
    static func bearer(_ header: String?) -> [UInt8]? {
        guard let header else { return nil }
        let parts = header.split(separator: " ", maxSplits: 1)
        guard parts.count == 2, parts[0].lowercased() == "bearer" else { return nil }
        let token = trim(parts[1])
        return token.isEmpty ? nil : Array(token.utf8)
    }

    /// Without leading and trailing blanks and tabs.
    static func trim(_ s: Substring) -> String {
        var s = s
        while s.first == " " || s.first == "\t" { s = s.dropFirst() }
        while s.last == " " || s.last == "\t" { s = s.dropLast() }
        return String(s)
    }

    static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        var diff: UInt8 = 0
        for i in a.indices { diff |= a[i] ^ b[i] }
        return diff == 0
    }

    static func answer(_ refusal: ResetRefusal) -> HTTPResponse {
        switch refusal {
        case .rate:
            return HTTPAPI.jsonError(429, "too many resets from this address; try again in a second", headers: [("Retry-After", "1")])
        case .host:
            return HTTPAPI.jsonError(403, "reset refused: the Host header must be this appliance's address or a loopback name")
        case .origin:
            return HTTPAPI.jsonError(403, "reset refused: cross-origin request (a reset is an operator's act, not a web page's)")
        case .contentType:
            return HTTPAPI.jsonError(415, "reset takes no body, or a JSON body with Content-Type: application/json")
        case .auth:
            return HTTPAPI.jsonError(401, "reset refused: missing or wrong Authorization: Bearer token (http.reset_token_file)",
                                     headers: [("WWW-Authenticate", "Bearer realm=\"tibet-twin reset\"")])
        }
    }
}
