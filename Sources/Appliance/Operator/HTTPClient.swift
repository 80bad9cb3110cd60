import Platform

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Why a request to the appliance's HTTP API failed.
package struct HTTPClientError: Error, Sendable, Hashable, CustomStringConvertible {
    package enum Kind: Sendable, Hashable {
        case badURL
        case resolve
        case connect
        case send
        case receive
        case timeout
        case badResponse
    }

    package var kind: Kind
    package var url: String
    package var errno: Int32
    package var detail: String

    package var description: String {
        switch kind {
        case .badURL: return "\(url): not an http://host:port URL"
        case .resolve: return "\(url): cannot resolve host: \(detail)"
        case .connect: return "\(url): cannot connect: \(Errno(errno).name) (is `tibet-twin run` running with this http.listen?)"
        case .send: return "\(url): send failed: \(Errno(errno).name)"
        case .receive: return "\(url): receive failed: \(Errno(errno).name)"
        case .timeout: return "\(url): no answer within the timeout"
        case .badResponse: return "\(url): not an HTTP response: \(detail)"
        }
    }
}

/// A minimal blocking HTTP/1.1 client for the command line (`tibet-twin status`, `reset`): one
/// request per connection, `Connection: close`, a deadline on the whole exchange. Not for the
/// running appliance's event loops.
package enum SimpleHTTPClient {
    /// `http://host:port` or `host:port` → (host, port, base path).
    package static func parse(url: String) -> (host: String, port: Int, base: String)? {
        var rest = Substring(url)
        if rest.hasPrefix("http://") { rest = rest.dropFirst(7) }
        guard !rest.hasPrefix("https://") else { return nil }
        var base = ""
        if let slash = rest.firstIndex(of: "/") {
            base = String(rest[slash...])
            rest = rest[..<slash]
            if base.hasSuffix("/") { base.removeLast() }
        }
        let host: Substring, port: Substring
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { return nil }
            host = rest[rest.index(after: rest.startIndex)..<close]
            let after = rest[rest.index(after: close)...]
            port = after.hasPrefix(":") ? after.dropFirst() : "80"
        } else if let colon = rest.lastIndex(of: ":") {
            host = rest[..<colon]
            port = rest[rest.index(after: colon)...]
        } else {
            host = rest
            port = "80"
        }
        guard !host.isEmpty, let p = Int(port), (1...65535).contains(p) else { return nil }
        return (String(host), p, base)
    }

    /// Sends one request and returns the status and body. A body is sent as `contentType`
    /// (JSON unless said otherwise); `headers` are added as given (`Authorization`).
    package static func request(method: String, url: String, path: String, body: [UInt8] = [],
                               contentType: String = "application/json", headers: [(String, String)] = [],
                               timeoutMs: Int = 5000) throws(HTTPClientError) -> (status: Int, body: [UInt8]) {
        guard let (host, port, base) = parse(url: url) else {
            throw HTTPClientError(kind: .badURL, url: url, errno: 0, detail: "")
        }
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        #if canImport(Glibc)
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        #else
        hints.ai_socktype = SOCK_STREAM
        #endif
        var res: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &res)
        guard rc == 0, let first = res else {
            throw HTTPClientError(kind: .resolve, url: url, errno: 0, detail: "getaddrinfo error \(rc)")
        }
        defer { freeaddrinfo(first) }
        var fd: Int32 = -1
        var lastErrno: Int32 = 0
        var ai: UnsafeMutablePointer<addrinfo>? = first
        var tv = timeval(tv_sec: timeoutMs / 1000, tv_usec: Int((timeoutMs % 1000) * 1000))
        while let a = ai {
            let s = socket(a.pointee.ai_family, a.pointee.ai_socktype, a.pointee.ai_protocol)
            if s >= 0 {
                setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
                setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
                if connect(s, a.pointee.ai_addr, a.pointee.ai_addrlen) == 0 {
                    fd = s
                    break
                }
                lastErrno = errno
                close(s)
            } else {
                lastErrno = errno
            }
            ai = a.pointee.ai_next
        }
        guard fd >= 0 else { throw HTTPClientError(kind: .connect, url: url, errno: lastErrno, detail: "") }
        defer { close(fd) }

        let hostHeader = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        var head = "\(method) \(base)\(path) HTTP/1.1\r\nHost: \(hostHeader)\r\nConnection: close\r\n"
        head += "User-Agent: tibet-twin\r\nContent-Length: \(body.count)\r\n"
        if !body.isEmpty { head += "Content-Type: \(contentType)\r\n" }
        for (name, value) in headers { head += "\(name): \(value)\r\n" }
        head += "\r\n"
        let out = Array(head.utf8) + body
        do { try SystemCall.sendAll(fd, out) } catch {
            let e = error.errno.rawValue
            throw HTTPClientError(kind: e == EAGAIN ? .timeout : .send, url: url, errno: e, detail: "")
        }
        var response: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 16384)
        while true {
            let n: Int
            do { n = try SystemCall.retrying { buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) } } } catch {
                throw HTTPClientError(kind: error.rawValue == EAGAIN ? .timeout : .receive, url: url, errno: error.rawValue, detail: "")
            }
            if n == 0 { break }
            response += buf[0..<n]
            if response.count > 64 << 20 { break }
        }
        return try parseResponse(response, url: url)
    }

    /// Splits a complete `Connection: close` response into status and body (chunked bodies too).
    static func parseResponse(_ r: [UInt8], url: String) throws(HTTPClientError) -> (status: Int, body: [UInt8]) {
        let sep: [UInt8] = [13, 10, 13, 10]
        guard let end = r.indices.dropLast(3).first(where: { r[$0..<$0 + 4].elementsEqual(sep) }) else {
            throw HTTPClientError(kind: .badResponse, url: url, errno: 0, detail: "no header end (\(r.count) bytes)")
        }
        let head = String(decoding: r[..<end], as: UTF8.self)
        let lines = head.split(separator: "\r\n", omittingEmptySubsequences: false)
        let statusParts = lines.first?.split(separator: " ") ?? []
        guard statusParts.count >= 2, statusParts[0].hasPrefix("HTTP/1."), let status = Int(statusParts[1]) else {
            throw HTTPClientError(kind: .badResponse, url: url, errno: 0, detail: String(lines.first ?? ""))
        }
        let chunked = lines.dropFirst().contains {
            $0.lowercased().hasPrefix("transfer-encoding:") && $0.lowercased().contains("chunked")
        }
        var body = Array(r[(end + 4)...])
        if chunked {
            var out: [UInt8] = []
            var i = 0
            while i < body.count {
                guard let lineEnd = body[i...].firstIndex(of: 13), lineEnd + 1 < body.count,
                      let size = Int(String(decoding: body[i..<lineEnd], as: UTF8.self)
                        .split(separator: ";").first.map(String.init) ?? "", radix: 16) else { break }
                if size == 0 { break }
                let start = lineEnd + 2
                guard start + size <= body.count else { break }
                out += body[start..<start + size]
                i = start + size + 2
            }
            body = out
        }
        return (status, body)
    }
}
