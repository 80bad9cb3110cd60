import CModbus
import Platform

#if canImport(Glibc)
import Glibc
#endif

/// Builds Modbus/TCP replies with libmodbus, into memory instead of onto a client socket.
///
/// libmodbus's `modbus_reply` writes its answer with one blocking-style `send()` on the
/// context's socket; on a non-blocking client socket with a full send buffer that reply would
/// be lost or cut in half. So the context's socket is one end of a private `socketpair`, and
/// every reply is read back from the other end and queued by the caller's event loop, which
/// then handles partial writes itself. The pair's buffer always has room: it is emptied after
/// every reply. The one exception is `replyDirect`: when the client socket's send queue is
/// empty, a reply (at most 260 bytes) goes in whole or not at all, so it is sent there directly.
///
/// Only requests that `ModbusRequestCheck.decide` passed as reads (`.readOnly` policy) or that
/// `ModbusRequestCheck.replyProblem` found fine (`.delegate` policy) reach `modbus_reply`, so it
/// never takes its 0.5 s sleep-and-flush path (bad quantity, unknown function).
///
/// Thread confinement: not thread-safe (one libmodbus context); use it from one thread only.
public final class ModbusReplier {
    private let ctx: OpaquePointer
    private var mapping: UnsafeMutablePointer<modbus_mapping_t>?
    private var sizes = (bits: -1, inputBits: -1, registers: -1, inputRegisters: -1)
    /// The end libmodbus writes to (the context's socket) and the end replies are read from.
    private let writeEnd: Int32
    private let readEnd: Int32

    /// Creates a TCP context that is never connected and a private socket pair for its output.
    /// The corresponding C functions are `modbus_new_tcp` and `modbus_set_socket`.
    public init() throws(ModbusError) {
        var fds: [Int32] = [-1, -1]
        let rc = socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds)
        if rc != 0 {
            throw ModbusError(kind: .other, errno: errno, function: "socketpair")
        }
        guard let c = modbus_new_tcp("127.0.0.1", 0) else {
            let e = errno
            close(fds[0]); close(fds[1])
            throw ModbusError(kind: .other, errno: e, function: "modbus_new_tcp")
        }
        ctx = c
        writeEnd = fds[0]
        readEnd = fds[1]
        _ = fcntl(readEnd, F_SETFL, fcntl(readEnd, F_GETFL) | O_NONBLOCK)
        if modbus_set_socket(ctx, writeEnd) != 0 {
            let e = errno
            modbus_free(ctx)
            close(fds[0]); close(fds[1])
            throw ModbusError(kind: .other, errno: e, function: "modbus_set_socket")
        }
    }

    deinit {
        if let mapping { modbus_mapping_free(mapping) }
        // The socket is ours, not libmodbus's: detach it before freeing the context.
        _ = modbus_set_socket(ctx, -1)
        modbus_free(ctx)
        close(writeEnd)
        close(readEnd)
    }

    /// Copies the four tables into the `modbus_mapping_t` that `modbus_reply` answers from,
    /// re-allocating it when a size changes. Bits are 0 or 1, one per byte, as libmodbus keeps them.
    /// The corresponding C function is `modbus_mapping_new_start_address`.
    public func load(coils: [UInt8], discreteInputs: [UInt8], holdingRegisters: [UInt16],
                     inputRegisters: [UInt16]) throws(ModbusError) {
        let want = (coils.count, discreteInputs.count, holdingRegisters.count, inputRegisters.count)
        if mapping == nil || sizes != want {
            if let mapping { modbus_mapping_free(mapping) }
            mapping = nil
            guard let m = modbus_mapping_new_start_address(
                0, UInt32(want.0), 0, UInt32(want.1), 0, UInt32(want.2), 0, UInt32(want.3)) else {
                throw ModbusError(kind: .other, errno: errno, function: "modbus_mapping_new_start_address")
            }
            mapping = m
            sizes = want
        }
        let m = mapping!.pointee
        if !coils.isEmpty { coils.withUnsafeBufferPointer { m.tab_bits.update(from: $0.baseAddress!, count: $0.count) } }
        if !discreteInputs.isEmpty {
            discreteInputs.withUnsafeBufferPointer { m.tab_input_bits.update(from: $0.baseAddress!, count: $0.count) }
        }
        if !holdingRegisters.isEmpty {
            holdingRegisters.withUnsafeBufferPointer { m.tab_registers.update(from: $0.baseAddress!, count: $0.count) }
        }
        if !inputRegisters.isEmpty {
            inputRegisters.withUnsafeBufferPointer {
                m.tab_input_registers.update(from: $0.baseAddress!, count: $0.count)
            }
        }
    }

    /// Answers a read request that `ModbusRequestCheck.decide` accepted, from the last loaded
    /// tables, appending the reply frame to `out`.
    /// The corresponding C function is `modbus_reply`.
    public func reply(to frame: UnsafeRawBufferPointer, into out: inout [UInt8]) throws(ModbusError) {
        guard let mapping else {
            throw ModbusError(kind: .other, errno: EINVAL, function: "modbus_reply")
        }
        try reply(to: frame, from: mapping, into: &out)
    }

    /// Answers a request from `mapping` (a `.delegate` server's `ModbusMapping`; writes change
    /// it), appending the reply frame to `out`. The caller has checked the frame with
    /// `ModbusRequestCheck.replyProblem`. The corresponding C function is `modbus_reply`.
    func reply(to frame: UnsafeRawBufferPointer, from mapping: UnsafeMutablePointer<modbus_mapping_t>,
               into out: inout [UInt8]) throws(ModbusError) {
        let p = frame.baseAddress!.assumingMemoryBound(to: UInt8.self)
        let rc = modbus_reply(ctx, p, Int32(frame.count), mapping)
        if rc < 0 { throw ModbusError(kind: .other, errno: errno, function: "modbus_reply") }
        try collect(Int(rc), function: "modbus_reply", into: &out)
    }

    /// Answers a read request that `ModbusRequestCheck.decide` accepted straight onto the
    /// non-blocking client socket `fd`, saving the round trip through the private pair; true if
    /// the whole reply was sent, false if nothing was (use `reply(to:into:)` then).
    ///
    /// Only taken when the socket's send queue is empty (`TIOCOUTQ` 0: every byte sent before
    /// has been acknowledged), so the kernel holds no other data for it and a reply of at most
    /// 260 bytes goes in whole or, under memory pressure, not at all (`EAGAIN`). libmodbus
    /// cannot report how much of a cut reply it sent, so a cut reply (never expected) throws
    /// `EMBBADDATA` and the caller must close the connection.
    /// The corresponding C function is `modbus_reply`.
    public func replyDirect(to frame: UnsafeRawBufferPointer, socket fd: Int32) throws(ModbusError) -> Bool {
        guard let mapping else {
            throw ModbusError(kind: .other, errno: EINVAL, function: "modbus_reply")
        }
        return try replyDirect(to: frame, from: mapping, socket: fd)
    }

    /// `replyDirect(to:socket:)` from `mapping` instead of the loaded tables. A write that is
    /// answered here is not applied again by a later `reply(to:from:into:)`: that is only
    /// called when this returned false, and then `modbus_reply` wrote the same values anyway.
    func replyDirect(to frame: UnsafeRawBufferPointer, from mapping: UnsafeMutablePointer<modbus_mapping_t>,
                     socket fd: Int32) throws(ModbusError) -> Bool {
        var queued: Int32 = -1
        if ioctl(fd, UInt(TIOCOUTQ), &queued) != 0 || queued != 0 { return false }
        let p = frame.baseAddress!.assumingMemoryBound(to: UInt8.self)
        _ = modbus_set_socket(ctx, fd)
        let rc = modbus_reply(ctx, p, Int32(frame.count), mapping)
        let e = errno
        _ = modbus_set_socket(ctx, writeEnd)
        if rc >= 0 { return true }
        // send() returned -1: nothing of this reply went out.
        if e == EAGAIN || e == EWOULDBLOCK || e == EINTR { return false }
        throw ModbusError(kind: .other, errno: e, function: "modbus_reply")
    }

    /// Answers `frame` with a Modbus exception (tid and unit id echoed), appending it to `out`.
    /// The corresponding C function is `modbus_reply_exception`.
    public func replyException(to frame: UnsafeRawBufferPointer, code: UInt8, into out: inout [UInt8]) throws(ModbusError) {
        let p = frame.baseAddress!.assumingMemoryBound(to: UInt8.self)
        let rc = modbus_reply_exception(ctx, p, UInt32(code))
        if rc < 0 { throw ModbusError(kind: .other, errno: errno, function: "modbus_reply_exception") }
        try collect(Int(rc), function: "modbus_reply_exception", into: &out)
    }

    /// Reads the `count` bytes libmodbus just wrote into the pair back into `out`.
    private func collect(_ count: Int, function: String, into out: inout [UInt8]) throws(ModbusError) {
        var got = 0
        var buffer = (UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0),
                      UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0),
                      UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0),
                      UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0),
                      UInt64(0), UInt64(0), UInt64(0), UInt64(0))  // 288 bytes ≥ the largest ADU (260)
        while got < count {
            let n: Int
            do {
                n = try SystemCall.retrying {
                    withUnsafeMutableBytes(of: &buffer) { raw -> Int in
                        let want = min(raw.count, count - got)
                        let n = recv(readEnd, raw.baseAddress!, want, Int32(MSG_DONTWAIT))
                        if n > 0 { out.append(contentsOf: UnsafeRawBufferPointer(rebasing: raw[0..<n])) }
                        return n
                    }
                }
            } catch {
                throw ModbusError(kind: .other, errno: error.rawValue, function: function)
            }
            if n == 0 { throw ModbusError(kind: .other, errno: EIO, function: function) }
            got += n
        }
    }
}
