import NIOCore
import NIOHTTP1
import NIOPosix
import Platform
import Synchronization

/// One HTTP request, fully read (head and body).
package struct HTTPRequest: Sendable {
    package var method: String
    /// The path without the query string (`/status`).
    package var path: String
    /// Query parameters (`?device=crane-01`), percent-decoded; the last one wins.
    package var query: [String: String]
    package var headers: [(String, String)]
    package var body: [UInt8]
    /// The client's address (`127.0.0.1:53122`), for the audit of a reset.
    package var remote: String

    package init(method: String, path: String, query: [String: String] = [:], headers: [(String, String)] = [],
                body: [UInt8] = [], remote: String = "") {
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.remote = remote
    }

    /// The value of a header (case-insensitive name), if present.
    package func header(_ name: String) -> String? {
        headers.first { $0.0.lowercased() == name.lowercased() }?.1
    }
}

/// One HTTP response.
package struct HTTPResponse: Sendable {
    package var status: Int
    package var contentType: String
    package var body: [UInt8]
    package var headers: [(String, String)]

    package init(status: Int, contentType: String = "text/plain; charset=utf-8", body: [UInt8],
                headers: [(String, String)] = []) {
        self.status = status
        self.contentType = contentType
        self.body = body
        self.headers = headers
    }

    package init(status: Int, contentType: String = "text/plain; charset=utf-8", text: String,
                headers: [(String, String)] = []) {
        self.init(status: status, contentType: contentType, body: Array(text.utf8), headers: headers)
    }
}

/// Answers one request by calling `respond` exactly once, from any thread (the guard loop answers
/// reset and status requests on its own thread).
package typealias HTTPHandler = @Sendable (HTTPRequest, @escaping @Sendable (HTTPResponse) -> Void) -> Void

/// Why the HTTP server could not start.
package struct HTTPServerError: Error, Sendable, CustomStringConvertible {
    package var address: String
    package var underlying: String
    package var description: String { "http.listen \(address): cannot listen: \(underlying)" }
}

/// What the HTTP server refused or cut off, for `/metrics`.
package struct HTTPServerCounters: Sendable, Hashable {
    /// Connections closed at accept because 32 were open.
    package var refusedTotal: UInt64 = 0
    /// Connections closed at accept because their address had `maxPerClient` open.
    package var refusedPerClient: UInt64 = 0
    /// Connections closed because a request did not arrive in full within the request timeout.
    package var requestTimeouts: UInt64 = 0
    /// Requests that were not HTTP (answered 400 and closed).
    package var badRequests: UInt64 = 0
}

/// A small HTTP/1.1 server on SwiftNIO for the appliance's local API (`/metrics`, `/status`,
/// `/healthz`, the status page, `POST /reset`).
///
/// One event loop thread of its own; requests are limited in size (64 KiB body), connections in
/// number (`maxConnections` in all, so the HTTP side can never eat the descriptor budget below
/// 1024 that libmodbus needs, and `maxPerClient` per address, so one client cannot take them
/// all) and in time: a request, head and body, must arrive within `requestTimeout` of the accept
/// or of the previous answer (a client that trickles a header byte every few seconds is closed
/// at that deadline, not kept alive by each byte), and a connection is closed after any error
/// answer (4xx, 5xx) and after a request that is not HTTP. It owns nothing of the guard: the
/// handler reads snapshots and sends commands.
package final class HTTPServer: Sendable {
    package let host: String
    package let requestedPort: Int
    let handler: HTTPHandler
    let maxConnections: Int
    let maxPerClient: Int
    let requestTimeout: TimeAmount
    let idleTimeout: TimeAmount
    let group: MultiThreadedEventLoopGroup
    let state = Mutex<(channel: Channel?, port: Int?)>((nil, nil))
    let connections = Atomic<Int>(0)
    /// Open connections per client address.
    let perClient = Mutex<[String: Int]>([:])
    let stats = Mutex(HTTPServerCounters())

    /// The largest request body accepted.
    package static let maxBody = 64 * 1024

    package init(host: String, port: Int, maxConnections: Int = 32, maxPerClient: Int = 8,
                requestTimeoutMs: Int = 2000, idleTimeoutSeconds: Int64 = 30, handler: @escaping HTTPHandler) {
        self.host = host
        self.requestedPort = port
        self.handler = handler
        self.maxConnections = maxConnections
        self.maxPerClient = maxPerClient
        self.requestTimeout = .milliseconds(Int64(requestTimeoutMs))
        self.idleTimeout = .seconds(idleTimeoutSeconds)
        self.group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    }

    /// The port actually bound (differs from `requestedPort` when that was 0); `nil` before `start`.
    package var port: Int? { state.withLock { $0.port } }

    /// What was refused or cut off so far.
    package var counters: HTTPServerCounters { stats.withLock { $0 } }

    /// Counts a connection from `address` in; false (and nothing counted) if that address has
    /// `maxPerClient` open already.
    func admit(address: String) -> Bool {
        perClient.withLock { m in
            let n = m[address, default: 0]
            guard n < maxPerClient else { return false }
            m[address] = n + 1
            return true
        }
    }

    func release(address: String) {
        perClient.withLock { m in
            let n = m[address, default: 1] - 1
            m[address] = n > 0 ? n : nil
        }
    }

    /// Binds and starts serving; returns the bound port.
    @discardableResult
    package func start() async throws(HTTPServerError) -> Int {
        let handler = self.handler
        let maxConnections = self.maxConnections
        let idle = self.idleTimeout
        let requestTimeout = self.requestTimeout
        let server = self
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 64)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                let now = server.connections.add(1, ordering: .relaxed).newValue
                channel.closeFuture.whenComplete { _ in server.connections.subtract(1, ordering: .relaxed) }
                if now > maxConnections {
                    server.stats.withLock { $0.refusedTotal += 1 }
                    return channel.close()
                }
                let address = channel.remoteAddress?.ipAddress ?? "?"
                guard server.admit(address: address) else {
                    server.stats.withLock { $0.refusedPerClient += 1 }
                    return channel.close()
                }
                channel.closeFuture.whenComplete { _ in server.release(address: address) }
                return channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    try sync.addHandler(IdleStateHandler(readTimeout: idle))
                    try sync.configureHTTPServerPipeline(withErrorHandling: true)
                    try sync.addHandler(HTTPRequestHandler(handler: handler, requestTimeout: requestTimeout, server: server))
                }
            }
        do {
            let channel = try await bootstrap.bind(host: host, port: requestedPort).get()
            let port = channel.localAddress?.port ?? requestedPort
            state.withLock { $0 = (channel, port) }
            return port
        } catch {
            try? await group.shutdownGracefully()
            throw HTTPServerError(address: "\(host):\(requestedPort)", underlying: "\(error)")
        }
    }

    /// Stops listening, closes every connection and the event loop thread.
    package func stop() async {
        let channel = state.withLock { s -> Channel? in
            let c = s.channel
            s.channel = nil
            return c
        }
        try? await channel?.close().get()
        try? await group.shutdownGracefully()
    }
}

/// Collects one request (head, body, end), hands it to the handler, writes the answer.
final class HTTPRequestHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let handler: HTTPHandler
    let requestTimeout: TimeAmount
    let server: HTTPServer?
    var head: HTTPRequestHead?
    var body: [UInt8] = []
    var tooLarge = false
    /// Closes the connection unless the next request has arrived in full by then; armed at
    /// accept and after each answer, cancelled when a request is complete.
    var deadline: Scheduled<Void>?

    init(handler: @escaping HTTPHandler, requestTimeout: TimeAmount = .seconds(2), server: HTTPServer? = nil) {
        self.handler = handler
        self.requestTimeout = requestTimeout
        self.server = server
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { armDeadline(context: context) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        deadline?.cancel()
        deadline = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        if deadline == nil { armDeadline(context: context) }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        deadline?.cancel()
        deadline = nil
        context.fireChannelInactive()
    }

    func armDeadline(context: ChannelHandlerContext) {
        deadline?.cancel()
        let server = self.server
        deadline = context.eventLoop.assumeIsolated().scheduleTask(in: requestTimeout) {
            server?.stats.withLock { $0.requestTimeouts += 1 }
            context.close(promise: nil)
        }
    }

    /// A request that is not HTTP: the protocol error handler has answered 400; close rather
    /// than leave the socket open until the idle timeout.
    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if error is HTTPParserError { server?.stats.withLock { $0.badRequests += 1 } }
        context.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h):
            head = h
            body = []
            tooLarge = false
        case .body(var buf):
            if body.count + buf.readableBytes > HTTPServer.maxBody {
                tooLarge = true
            } else if let bytes = buf.readBytes(length: buf.readableBytes) {
                body += bytes
            }
        case .end:
            guard let head else { return }
            self.head = nil
            deadline?.cancel()
            deadline = nil
            let keepAlive = head.isKeepAlive
            if tooLarge {
                write(context: context, head: head, keepAlive: false,
                      response: HTTPResponse(status: 413, text: "request body larger than 64 KiB\n"))
                return
            }
            let (path, query) = HTTPRequestHandler.split(uri: head.uri)
            let request = HTTPRequest(method: head.method.rawValue, path: path, query: query,
                                      headers: head.headers.map { ($0.name, $0.value) }, body: body,
                                      remote: context.remoteAddress.map(Self.describe) ?? "")
            body = []
            let loop = context.eventLoop
            let bound = NIOLoopBound((self, context), eventLoop: loop)
            handler(request) { response in
                loop.execute {
                    let (me, ctx) = bound.value
                    me.write(context: ctx, head: head, keepAlive: keepAlive, response: response)
                }
            }
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            context.close(promise: nil)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func write(context: ChannelHandlerContext, head: HTTPRequestHead, keepAlive: Bool, response: HTTPResponse) {
        guard context.channel.isActive else { return }
        // After an error answer the connection closes: a client that got something wrong
        // starts again on a new one rather than hold this one.
        let keepAlive = keepAlive && response.status < 400
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: response.contentType)
        headers.add(name: "Content-Length", value: String(response.body.count))
        headers.add(name: "Cache-Control", value: "no-store")
        for (n, v) in response.headers { headers.add(name: n, value: v) }
        headers.add(name: "Connection", value: keepAlive ? "keep-alive" : "close")
        let status = HTTPResponseStatus(statusCode: response.status)
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))),
                      promise: nil)
        if head.method != .HEAD {
            var buf = context.channel.allocator.buffer(capacity: response.body.count)
            buf.writeBytes(response.body)
            context.write(wrapOutboundOut(.body(.byteBuffer(buf))), promise: nil)
        }
        let done = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: done)
        if !keepAlive {
            let channel = context.channel
            done.futureResult.whenComplete { _ in channel.close(promise: nil) }
        } else {
            armDeadline(context: context)
        }
    }

    /// `/status?x=1&y=a%20b` → (`/status`, [x: 1, y: a b]).
    static func split(uri: String) -> (String, [String: String]) {
        guard let q = uri.firstIndex(of: "?") else { return (percentDecode(uri), [:]) }
        var query: [String: String] = [:]
        for pair in uri[uri.index(after: q)...].split(separator: "&") {
            let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let key = percentDecode(String(kv[0]))
            query[key] = kv.count > 1 ? percentDecode(String(kv[1])) : ""
        }
        return (percentDecode(String(uri[..<q])), query)
    }

    /// Decodes `%XX` escapes and `+` (as space, in queries); invalid escapes stay as written.
    static func percentDecode(_ s: String) -> String {
        var out: [UInt8] = []
        let u = Array(s.utf8)
        var i = 0
        while i < u.count {
            if u[i] == UInt8(ascii: "%"), i + 2 < u.count,
               let v = UInt8(String(decoding: u[(i + 1)...(i + 2)], as: UTF8.self), radix: 16) {
                out.append(v)
                i += 3
            } else {
                out.append(u[i] == UInt8(ascii: "+") ? UInt8(ascii: " ") : u[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func describe(_ address: SocketAddress) -> String {
        guard let ip = address.ipAddress else { return "\(address)" }
        let port = address.port.map(String.init) ?? "?"
        return ip.contains(":") ? "[\(ip)]:\(port)" : "\(ip):\(port)"
    }
}
