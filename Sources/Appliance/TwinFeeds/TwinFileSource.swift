import Dispatch
import Foundation
import Logging
import Modbus
import Platform
import Synchronization
import TibetTwin

#if canImport(Glibc)
import Glibc
#endif

/// Why a twin source could not start.
package struct TwinSourceError: Error, Sendable, Hashable, CustomStringConvertible {
    package enum Kind: String, Sendable, Hashable {
        case badPath, pipe, bind, chmod, alreadyStarted, mqtt, opcua
    }

    package var kind: Kind
    /// The source (`file:…`, `tcp:…`, `unix:…`).
    package var source: String
    /// The failing call, e.g. `bind` or `pipe2`.
    package var function: String
    package var errno: Int32?
    package var detail: String

    package init(kind: Kind, source: String, function: String, errno: Int32? = nil, detail: String) {
        self.kind = kind
        self.source = source
        self.function = function
        self.errno = errno
        self.detail = detail
    }

    package var description: String {
        var s = "\(source): \(function): \(detail)"
        if let errno { s += " (\(Errno(errno).name))" }
        return s
    }
}

/// Follows a twin feed file like `tail -F` (docs/config.md `file:`): appended lines are read as they
/// arrive; a rotation (the path renamed away and a new file created) is followed after the old
/// file has been read to its end; a truncation restarts at the beginning; a partial last line
/// waits for its newline. It starts at the end of an existing file (old lines are history, not
/// state) unless `fromStart`; a file that does not exist yet is waited for and then read from
/// its beginning.
///
/// One dedicated thread per source, woken by inotify on the file's directory (with a periodic
/// check as a safety net, and as the only mechanism where inotify is unavailable). Never stops
/// on a bad line or a missing file; only `stop()` ends it.
package final class TwinFileSource: Sendable {
    package let path: String
    package let fromStart: Bool
    /// The longest wait between checks for new data, rotation and truncation, in milliseconds.
    package let pollIntervalMs: Int32
    let core: TwinSourceCore
    private let control: Mutex<Control>

    private struct Control: ~Copyable {
        var wakeRead: Int32 = -1
        var wakeWrite: Int32 = -1
        var done: DispatchSemaphore?
        var stopping = false
    }

    /// `logIntervalSeconds` bounds drop logs per reason (docs/twin-feed.md: once per minute).
    package init(path: String, fromStart: Bool = false, pipeline: TwinFeedPipeline,
                logger: Logger = Logger(label: "tibet-twin.twin.file"), clock: any TimeSource = SystemTimeSource(),
                pollIntervalMs: Int32 = 100, logIntervalSeconds: Double = 60) {
        self.path = path
        self.fromStart = fromStart
        self.pollIntervalMs = pollIntervalMs
        self.core = TwinSourceCore(name: "file:\(path)", pipeline: pipeline, logger: logger, clock: clock,
                                   logIntervalSeconds: logIntervalSeconds)
        self.control = Mutex(Control())
    }

    /// The source's name in logs and metrics: `file:<path>`.
    package var name: String { core.name }

    /// A snapshot of the counters.
    package var counters: TwinFeedCounters { core.snapshot }

    /// Starts the follower thread and returns at once. An existing file's current end is taken
    /// before this returns, so lines appended afterwards are read. (`start()` is the async form.)
    package func startFollowing() throws(TwinSourceError) {
        guard !path.isEmpty, !path.hasSuffix("/") else {
            throw TwinSourceError(kind: .badPath, source: name, function: "start", detail: "not a file path: \"\(path)\"")
        }
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else {
            throw TwinSourceError(kind: .pipe, source: name, function: "pipe", errno: errno, detail: "cannot create the wake-up pipe")
        }
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        let done = DispatchSemaphore(value: 0)
        let started: Bool = control.withLock { c in
            if c.done != nil { return false }
            c.wakeRead = fds[0]
            c.wakeWrite = fds[1]
            c.done = done
            return true
        }
        guard started else {
            close(fds[0]); close(fds[1])
            throw TwinSourceError(kind: .alreadyStarted, source: name, function: "start", detail: "already started")
        }
        let follower = FileFollower(source: self, wakeFD: fds[0])
        follower.openInitial()
        let thread = Thread { follower.run(); done.signal() }
        thread.name = "twin-file"
        thread.start()
    }

    /// Stops the thread and waits for it; safe to call more than once. (`stop()` is the async form.)
    package func stopFollowing() {
        let (w, done): (Int32, DispatchSemaphore?) = control.withLock { c in
            if c.stopping { return (-1, nil) }
            c.stopping = true
            return (c.wakeWrite, c.done)
        }
        guard let done else { return }
        var one: UInt8 = 1
        _ = write(w, &one, 1)
        done.wait()
        control.withLock { c in
            close(c.wakeRead); close(c.wakeWrite)
            c.wakeRead = -1; c.wakeWrite = -1
        }
    }

    var isStopping: Bool { control.withLock { $0.stopping } }
}

/// The follower's state, confined to its thread (created before the thread starts, then used
/// only by it).
private final class FileFollower: @unchecked Sendable {
    let source: TwinFileSource
    let path: String
    let dir: String
    let baseName: String
    let wakeFD: Int32
    var inotifyFD: Int32 = -1
    var watch: Int32 = -1

    var fd: Int32 = -1
    var dev: UInt64 = 0
    var ino: UInt64 = 0
    /// Bytes consumed from the current file.
    var pos: Int64 = 0
    var lineNumber: UInt64 = 0
    var framer = LineFramer(maxLineBytes: TwinLineParser.maxLineBytes)
    /// The file's lines as last accepted per device (a repeat is not parsed again).
    var memo = TwinLineMemo()
    var buffer = [UInt8](repeating: 0, count: 1 << 16)
    var waitingLogged = false

    init(source: TwinFileSource, wakeFD: Int32) {
        self.source = source
        self.path = source.path
        self.wakeFD = wakeFD
        if let slash = path.lastIndex(of: "/") {
            let d = String(path[..<slash])
            dir = d.isEmpty ? "/" : d
            baseName = String(path[path.index(after: slash)...])
        } else {
            dir = "."
            baseName = path
        }
    }

    var core: TwinSourceCore { source.core }

    /// Opens the file as it is at start: at its end unless `fromStart`.
    func openInitial() {
        addWatch()
        if openFile() {
            if !source.fromStart {
                var st = stat()
                if fstat(fd, &st) == 0, st.st_size > 0 {
                    pos = Int64(st.st_size)
                    lseek(fd, off_t(pos), SEEK_SET)
                    // Started in the middle of a line being written: skip its tail quietly.
                    var last: UInt8 = 0
                    if pread(fd, &last, 1, off_t(pos - 1)) == 1, last != 0x0A { framer.discarding = true }
                }
                core.logger.info("following twin feed file from its end", metadata: ["source": "\(core.name)", "offset": "\(pos)"])
            } else {
                core.logger.info("following twin feed file from its start", metadata: ["source": "\(core.name)"])
            }
        }
    }

    func addWatch() {
        if inotifyFD < 0 { inotifyFD = inotify_init1(Int32(IN_NONBLOCK | IN_CLOEXEC)) }
        guard inotifyFD >= 0, watch < 0 else { return }
        let mask = UInt32(IN_MODIFY | IN_CREATE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_CLOSE_WRITE | IN_ATTRIB)
        watch = inotify_add_watch(inotifyFD, dir, mask)
    }

    /// Opens `path` (position 0); false when it does not exist (yet) or cannot be opened.
    func openFile() -> Bool {
        let f = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard f >= 0 else {
            let e = errno
            if !waitingLogged {
                waitingLogged = true
                core.logger.warning("twin feed file not readable; waiting for it", metadata: [
                    "source": "\(core.name)", "path": "\(path)",
                    "errno": "\(Errno(e).name)\(PathAccess.hint(Errno(e), path: path))"])
            }
            return false
        }
        var st = stat()
        fstat(f, &st)
        if (st.st_mode & S_IFMT) == S_IFDIR {
            close(f)
            if !waitingLogged {
                waitingLogged = true
                core.logger.error("twin feed path is a directory; waiting for a file", metadata: [
                    "source": "\(core.name)", "errno": "EISDIR"])
            }
            return false
        }
        waitingLogged = false
        fd = f
        dev = UInt64(st.st_dev)
        ino = UInt64(st.st_ino)
        pos = 0
        lineNumber = 0
        _ = framer.reset()
        return true
    }

    func closeFile() {
        if fd >= 0 { close(fd) }
        fd = -1
    }

    func run() {
        defer {
            closeFile()
            if inotifyFD >= 0 { close(inotifyFD) }
        }
        while !source.isStopping {
            if fd < 0 {
                addWatch()
                _ = openFile()
            }
            if fd >= 0 {
                drain()
                checkTruncationAndRotation()
            }
            waitForChange()
        }
    }

    /// Reads everything available from the current file.
    func drain() {
        while !source.isStopping {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            guard n > 0 else { return }
            pos += Int64(n)
            let received = core.clock.now()
            core.update { $0.bytes += UInt64(n) }
            buffer.withUnsafeBytes { raw in
                let chunk = UnsafeRawBufferPointer(rebasing: raw[0..<n])
                framer.feed(chunk) { event in
                    lineNumber += 1
                    switch event {
                    case .line(let line):
                        _ = core.handle(line, received: received, lineNumber: lineNumber, memo: &memo, where: "\(path):\(lineNumber)")
                    case .tooLong(let length):
                        core.countDrop(TwinDrop(reason: .tooLong, detail: "line longer than \(TwinLineParser.maxLineBytes) bytes (\(length) so far); skipped to its newline"),
                                       received: received, lineNumber: lineNumber, where: "\(path):\(lineNumber)")
                    }
                    return true
                }
            }
        }
    }

    func checkTruncationAndRotation() {
        var st = stat()
        if fstat(fd, &st) == 0, Int64(st.st_size) < pos {
            core.logger.info("twin feed file truncated; reading from its start", metadata: [
                "source": "\(core.name)", "was": "\(pos)", "now": "\(st.st_size)"])
            lostPartialLine(because: "the file was truncated")
            lseek(fd, 0, SEEK_SET)
            pos = 0
            lineNumber = 0
            core.update { $0.truncations += 1 }
            drain()
        }
        var ps = stat()
        guard stat(path, &ps) == 0 else { return }  // renamed away, no new file yet: keep reading the old one
        if UInt64(ps.st_dev) != dev || UInt64(ps.st_ino) != ino {
            // Rotated: finish the old file, then switch.
            drain()
            lostPartialLine(because: "the file was rotated")
            closeFile()
            core.update { $0.rotations += 1 }
            if openFile() {
                core.logger.info("twin feed file rotated; following the new file from its start", metadata: ["source": "\(core.name)"])
                drain()
            }
        }
    }

    func lostPartialLine(because why: String) {
        let had = framer.pendingBytes > 0
        _ = framer.reset()
        if had {
            lineNumber += 1
            core.countDrop(TwinDrop(reason: .incompleteLine, detail: "a partial line was lost: \(why) before its newline"),
                           received: core.clock.now(), lineNumber: lineNumber, where: "\(path):\(lineNumber)")
        }
    }

    /// Sleeps until inotify reports a change in the directory, `stop()` wakes it, or the poll interval passes.
    func waitForChange() {
        var fds = [pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0)]
        if inotifyFD >= 0, watch >= 0 { fds.append(pollfd(fd: inotifyFD, events: Int16(POLLIN), revents: 0)) }
        let timeout = source.pollIntervalMs
        _ = poll(&fds, nfds_t(fds.count), timeout)
        if fds.count > 1, fds[1].revents != 0 {
            var events = [UInt8](repeating: 0, count: 4096)
            while events.withUnsafeMutableBytes({ read(inotifyFD, $0.baseAddress, $0.count) }) > 0 {}
        }
    }
}
