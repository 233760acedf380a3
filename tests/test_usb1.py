"""usbip_backend.usb1: python-libusb1-style programs against the virtual server over TCP.

Stock devices (VID 0x1209): 1-1 loopback (0x01 -> 0x81 loopback, 0x82 source, 0x02 sink, 0x5F
stalls), 1-2 CDC-ACM echo, 1-3 HID keyboard, 1-4 isochronous (interface 0 alt 1: 0x81 / 0x01).
"""

from __future__ import annotations

import threading
import time

import pytest

from usbip_backend import protocol as P
from usbip_backend import usb1
from usbip_backend.sim import SimServer
from usbip_backend.sim.devices import LoopbackDevice, pattern, stock_devices

VID = 0x1209


@pytest.fixture
def server():
    with SimServer(stock_devices()) as srv:
        yield srv


@pytest.fixture
def ctx(server):
    with usb1.USBContext(host="127.0.0.1", port=server.port) as context:
        yield context


def loopback(ctx):
    handle = ctx.openByVendorIDAndProductID(VID, 0x0001)
    assert handle is not None
    handle.setConfiguration(1)
    return handle


def pump(ctx, transfers, until):
    """handleEvents until ``until()`` (bounded: every transfer has a timeout)."""
    deadline = time.monotonic() + 20
    while not until():
        assert time.monotonic() < deadline, "events did not come"
        ctx.handleEventsTimeout(1)


# -- the device list and descriptors ---------------------------------------------------------------------
def test_device_list_needs_no_import_and_descriptors_do(server, ctx):
    devices = ctx.getDeviceList()
    assert [(d.getVendorID(), d.getProductID()) for d in devices] == [(VID, p) for p in (1, 2, 3, 4)]
    acm = devices[1]
    assert (acm.getBusNumber(), acm.getPortNumberList(), acm.getDeviceSpeed()) == (1, [2], usb1.SPEED_HIGH)
    assert str(acm).startswith("Bus 001 Device ") and "ID 1209:0002" in str(acm)
    assert "1-2" in [r.busid for r in _listed(server)]  # nothing imported yet
    assert acm.getbcdUSB() == 0x0200 and acm.getMaxPacketSize0() == 64  # now it is
    assert "1-2" not in [r.busid for r in _listed(server)]
    configs = list(acm.iterConfigurations())
    assert len(configs) == len(acm) == acm.getNumConfigurations() == 1
    control, data = configs[0]
    setting = control[0]
    assert setting.getClassTuple() == (0x02, 0x02)
    assert [e[1] for e in setting.getExtra()] == [0x24] * 4  # CDC functional descriptors
    assert [ep.getAddress() for ep in data[0]] == [0x01, 0x81]
    assert [s.getNumber() for s in acm.iterSettings()] == [0, 1]
    assert acm.getManufacturer() and acm.getProduct()
    assert "1-2" not in [r.busid for r in _listed(server)]  # the string getters kept the import
    acm.close()
    assert server.wait_free("1-2")


def _listed(server):
    from usbip_backend.client import list_devices

    return list_devices("127.0.0.1", server.port, timeout=5)


def test_closing_the_last_handle_gives_the_device_back(server, ctx):
    handle = loopback(ctx)
    assert "1-1" not in [r.busid for r in _listed(server)]
    assert ctx.getByVendorIDAndProductID(VID, 0x0001) is handle.getDevice()  # still ours, still listed
    handle.close()
    assert server.wait_free("1-1")


def test_a_refused_import_raises_usb_error_from_every_getter_that_imports(server, ctx):
    from usbip_backend.client import import_device

    device = ctx.getByVendorIDAndProductID(VID, 0x0001)
    assert device is not None
    with import_device("127.0.0.1", server.port, "1-1", timeout=5):  # another client has it now
        for getter in (device.getbcdUSB, lambda: device.getMaxPacketSize(0x81),
                       lambda: device.getMaxISOPacketSize(0x81), device.iterConfigurations, device.open):
            with pytest.raises(usb1.USBErrorIO):
                getter()
    assert server.wait_free("1-1")
    assert device.getMaxPacketSize(0x81) == 512  # the import works once the other client let go


class SlowRelease(SimServer):
    """Frees a closed import only after it has refused one import of it as busy: the moment a
    real server takes to notice that a connection closed, made certain."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.busy_answers = 0
        self._let_go = threading.Event()

    def _release(self, device):
        self._let_go.wait(10)
        super()._release(device)

    def _claim(self, busid, conn):
        status, device = super()._claim(busid, conn)
        if status == P.Status.ST_DEV_BUSY:
            self.busy_answers += 1
            self._let_go.set()
        return status, device


def test_open_right_after_the_last_close_waits_for_the_server_to_free_the_device():
    with SlowRelease(stock_devices()) as srv, usb1.USBContext(host="127.0.0.1", port=srv.port) as ctx:
        handle = loopback(ctx)
        device = handle.getDevice()
        handle.close()  # the server has not freed 1-1 yet
        again = device.open()
        assert srv.busy_answers >= 1  # the first re-import was refused, a retry got it
        again.setConfiguration(1)
        assert again.bulkWrite(0x01, b"back", timeout=2000) == 4
        assert again.bulkRead(0x81, 64, timeout=2000) == b"back"
        again.close()


# -- synchronous I/O -----------------------------------------------------------------------------------------
def test_synchronous_calls_and_their_errors(ctx):
    handle = loopback(ctx)
    with handle.claimInterface(0):
        assert handle.controlWrite(usb1.TYPE_VENDOR | usb1.RECIPIENT_DEVICE, 0x5B, 0, 0, b"stored") == 6
        assert handle.controlRead(usb1.TYPE_VENDOR | usb1.RECIPIENT_DEVICE, 0x5C, 0, 0, 64) == b"stored"
        assert handle.bulkRead(0x82, 512, timeout=2000) == pattern(512)
        assert handle.bulkWrite(0x01, b"echo", timeout=2000) == 4
        assert handle.bulkRead(0x81, 512, timeout=2000) == b"echo"
        with pytest.raises(usb1.USBErrorTimeout) as timed_out:
            handle.bulkRead(0x81, 512, timeout=100)
        assert timed_out.value.transferred == 0 and timed_out.value.received == b""
        with pytest.raises(usb1.USBErrorPipe):
            handle.controlRead(usb1.TYPE_VENDOR | usb1.RECIPIENT_DEVICE, 0x5F, 0, 0, 4)
        assert handle.getConfiguration() == 1
        assert handle.getSupportedLanguageList() == [0x0409]
        assert handle.getManufacturer() == handle.getStringDescriptor(1, 0x0409)
        assert handle.getStringDescriptor(0, 0x0409) is None
        assert handle.kernelDriverActive(0) is False
    handle.close()


# -- asynchronous transfers ------------------------------------------------------------------------------------
def test_sixteen_transfer_bulk_in_pump_with_resubmission(ctx):
    """The issue's example: 16 transfers primed, each resubmitted from its callback."""
    handle = loopback(ctx)
    received = []
    wanted = 200

    def on_done(transfer):
        assert transfer.getStatus() == usb1.TRANSFER_COMPLETED
        received.append(bytes(transfer.getBuffer()[:transfer.getActualLength()]))
        if len(received) + sum(t.isSubmitted() for t in transfers) < wanted:
            transfer.submit()

    transfers = []
    with handle.claimInterface(0):
        for _ in range(16):
            t = handle.getTransfer()
            t.setBulk(0x82, 16384, callback=on_done, timeout=5000)
            t.submit()
            transfers.append(t)
        while any(t.isSubmitted() for t in transfers):
            ctx.handleEvents()
    assert len(received) == wanted and set(received) == {pattern(16384)}
    handle.close()


def test_a_resubmitted_transfer_is_timed_from_its_own_submission(ctx):
    """A transfer resubmitted from its callback is made again in place (the same engine URB):
    the deadline of its first submission, still ahead, must not cut the second short."""
    handle = loopback(ctx)
    done = []
    again = []

    def on_done(tr):
        done.append((tr.getStatus(), time.monotonic()))
        if len(done) == 1:
            again.append(time.monotonic())
            tr.submit()  # its own deadline: 0.4 s from now

    with handle.claimInterface(0):
        t = handle.getTransfer()
        t.setBulk(0x81, 64, callback=on_done, timeout=400)
        start = time.monotonic()
        t.submit()  # the loop IN stays pending until something is written to 0x01
        while time.monotonic() - start < 0.25:  # well into this submission's 400 ms
            ctx.handleEventsTimeout(0.05)
        handle.bulkWrite(0x01, b"first", timeout=2000)
        pump(ctx, [t], lambda: done)
        assert done[0][0] == usb1.TRANSFER_COMPLETED and again
        while time.monotonic() - start < 0.55:  # past the first deadline, before its own
            ctx.handleEventsTimeout(0.05)
        if time.monotonic() - again[0] < 0.38:  # (a loaded machine may have slept past its own)
            assert len(done) == 1 and t.isSubmitted(), f"ended early: {done[1:]}"
        pump(ctx, [t], lambda: len(done) == 2)
    assert done[1][0] == usb1.TRANSFER_TIMED_OUT and done[1][1] - again[0] >= 0.39
    handle.close()


def test_async_control_transfers_and_user_data(ctx):
    handle = loopback(ctx)
    seen = []
    transfers = []
    for i in range(16):
        t = handle.getTransfer()
        t.setControl(usb1.ENDPOINT_IN | usb1.TYPE_STANDARD, usb1.REQUEST_GET_DESCRIPTOR, usb1.DT_DEVICE << 8, 0,
                     18, callback=lambda tr: seen.append((tr.getUserData(), bytes(tr.getBuffer()))),
                     user_data=i, timeout=2000)
        t.submit()
        transfers.append(t)
    pump(ctx, transfers, lambda: len(seen) == 16)
    assert [i for i, _ in seen] == list(range(16))  # one endpoint: submission order
    assert all(len(data) == 18 and data[1] == usb1.DT_DEVICE for _, data in seen)
    handle.close()


def test_writable_buffers_are_used_without_copying(ctx):
    handle = loopback(ctx)
    buf = bytearray(4096)
    done = []
    t = handle.getTransfer()
    t.setBulk(0x82, buf, callback=done.append, timeout=2000)
    t.submit()
    pump(ctx, [t], lambda: done)
    assert t.getBuffer().obj is buf and bytes(buf) == pattern(4096)
    handle.close()


def test_cancel_of_a_pending_in_then_the_next_transfer_gets_the_data(ctx):
    handle = loopback(ctx)
    ended = []
    t = handle.getTransfer()
    t.setBulk(0x81, 512, callback=lambda tr: ended.append(tr.getStatus()), timeout=0)
    t.submit()
    t.cancel()
    pump(ctx, [t], lambda: ended)
    assert ended == [usb1.TRANSFER_CANCELLED] and not t.isSubmitted()
    with pytest.raises(usb1.USBErrorNotFound):
        t.cancel()
    handle.bulkWrite(0x01, b"after the cancel")
    t.setBulk(0x81, 512, callback=lambda tr: ended.append(bytes(tr.getBuffer()[:tr.getActualLength()])))
    t.submit()
    pump(ctx, [t], lambda: len(ended) == 2)
    assert ended[1] == b"after the cancel"  # nothing was lost to the cancelled transfer
    handle.close()


def test_stall_and_timeout_statuses(ctx):
    handle = loopback(ctx)
    statuses = {}
    stall = handle.getTransfer()
    stall.setControl(usb1.ENDPOINT_IN | usb1.TYPE_VENDOR, 0x5F, 0, 0, 4,
                     callback=lambda tr: statuses.setdefault("stall", tr.getStatus()))
    late = handle.getTransfer()
    late.setBulk(0x81, 64, callback=lambda tr: statuses.setdefault("timeout", (tr.getStatus(), time.monotonic())),
                 timeout=300)
    t0 = time.monotonic()
    stall.submit()
    late.submit()
    pump(ctx, [stall, late], lambda: len(statuses) == 2)
    assert statuses["stall"] == usb1.TRANSFER_STALL
    status, when = statuses["timeout"]
    assert status == usb1.TRANSFER_TIMED_OUT and when - t0 >= 0.3
    handle.close()


def test_server_hang_up_ends_every_pending_transfer_with_no_device():
    srv = SimServer([LoopbackDevice("1-1")]).start()
    try:
        with usb1.USBContext(host="127.0.0.1", port=srv.port) as context:
            handle = loopback(context)
            statuses = []
            transfers = []
            for _ in range(8):
                t = handle.getTransfer()
                t.setBulk(0x81, 64, callback=lambda tr: statuses.append(tr.getStatus()))
                t.submit()
                transfers.append(t)
            srv.stop()
            pump(context, transfers, lambda: len(statuses) == 8)
            assert statuses == [usb1.TRANSFER_NO_DEVICE] * 8
            with pytest.raises(usb1.USBErrorNoDevice):
                handle.bulkRead(0x82, 64, timeout=1000)
    finally:
        srv.stop()


def test_isochronous_out_then_in_with_iterISO(ctx):
    handle = ctx.openByVendorIDAndProductID(VID, 0x0004)
    handle.setConfiguration(1)
    handle.setInterfaceAltSetting(0, 1)
    done = []
    out = handle.getTransfer(iso_packets=4)
    packets = [bytes([i]) * 100 for i in range(4)]
    out.setIsochronous(0x01, b"".join(packets), callback=done.append, timeout=2000)
    out.submit()
    pump(ctx, [out], lambda: done)
    assert out.getStatus() == usb1.TRANSFER_COMPLETED
    assert [p["actual_length"] for p in out.getISOSetupList()] == [100] * 4
    into = handle.getTransfer(iso_packets=4)
    into.setIsochronous(0x81, 4 * 1024, callback=done.append, timeout=2000)
    assert [len(b) for b in into.getISOBufferList()] == [1024] * 4
    into.submit()
    pump(ctx, [into], lambda: len(done) == 2)
    got = [(status, bytes(data)) for status, data in into.iterISO()]
    assert got == [(usb1.TRANSFER_COMPLETED, p) for p in packets]  # the OUT packets came back
    with pytest.raises(TypeError):
        handle.getTransfer().setIsochronous(0x81, 1024)
    with pytest.raises(ValueError, match="evenly"):
        handle.getTransfer(iso_packets=3).setIsochronous(0x81, 1024)
    handle.close()


def test_an_exception_in_a_callback_is_raised_from_handle_events_and_nothing_is_lost(ctx):
    handle = loopback(ctx)
    calls = []

    def bad(transfer):
        calls.append(transfer.getUserData())
        if transfer.getUserData() == 0:
            raise RuntimeError("callback bug")

    transfers = []
    for i in range(3):
        t = handle.getTransfer()
        t.setBulk(0x82, 64, callback=bad, user_data=i, timeout=2000)
        t.submit()
        transfers.append(t)
    with pytest.raises(RuntimeError, match="callback bug"):
        pump(ctx, transfers, lambda: len(calls) == 3)
    pump(ctx, transfers, lambda: len(calls) == 3)  # the ones behind it are still delivered
    assert calls == [0, 1, 2]
    handle.close()


def test_close_from_inside_a_callback_and_doom(ctx):
    handle = loopback(ctx)
    closed = []
    t = handle.getTransfer()

    def on_done(transfer):
        transfer.close()
        closed.append(True)

    t.setBulk(0x82, 64, callback=on_done, timeout=2000)
    t.submit()
    pump(ctx, [t], lambda: closed)
    with pytest.raises(usb1.DoomedTransferError):
        t.setBulk(0x82, 64)
    doomed = handle.getTransfer()
    doomed.setBulk(0x82, 64, callback=lambda tr: closed.append("doomed"), timeout=2000)
    doomed.submit()
    doomed.doom()
    pump(ctx, [doomed], lambda: len(closed) == 2)
    with pytest.raises(ValueError, match="initialized"):  # closed after its callback, as libusb1 does
        doomed.submit()
    handle.close()


def test_transfer_helper_resubmits_by_status(ctx):
    handle = loopback(ctx)
    counts = {"done": 0}

    def on_completed(transfer):
        counts["done"] += 1
        return counts["done"] < 5

    helper = usb1.USBTransferHelper()
    helper.setEventCallback(usb1.TRANSFER_COMPLETED, on_completed)
    with pytest.raises(ValueError):
        helper.setEventCallback(99, on_completed)
    t = handle.getTransfer()
    t.setBulk(0x82, 64, callback=helper, timeout=2000)
    t.submit()
    pump(ctx, [t], lambda: counts["done"] == 5 and not t.isSubmitted())
    handle.close()


def test_submitted_transfers_cannot_be_changed(ctx):
    handle = loopback(ctx)
    t = handle.getTransfer()
    with pytest.raises(ValueError, match="initialized"):
        t.submit()
    t.setBulk(0x81, 64, timeout=0)
    t.submit()
    for change in (lambda: t.setBulk(0x81, 8), lambda: t.submit(), lambda: t.close(), lambda: t.setBuffer(8)):
        with pytest.raises(ValueError):
            change()
    handle.close()  # cancels it and waits for it


def test_leaving_the_context_with_transfers_in_flight_cancels_them(server):
    statuses = []
    with usb1.USBContext(host="127.0.0.1", port=server.port) as context:
        handle = loopback(context)
        for _ in range(4):
            t = handle.getTransfer()
            t.setBulk(0x81, 64, callback=lambda tr: statuses.append(tr.getStatus()))
            t.submit()
    assert statuses == [usb1.TRANSFER_CANCELLED] * 4
    assert server.wait_free("1-1")


def test_handle_events_timeout_returns_on_time_and_interrupt_wakes_it(ctx):
    t0 = time.monotonic()
    ctx.handleEventsTimeout(0.2)
    assert time.monotonic() - t0 >= 0.2
    ctx.handleEventsTimeout(0)  # nothing pending: returns at once
    waker = threading.Timer(0.1, ctx.interruptEventHandler)
    waker.start()
    t0 = time.monotonic()
    ctx.handleEvents()  # would wait 60 s without the interrupt
    waker.join()
    assert time.monotonic() - t0 < 30


def test_poll_fd_is_readable_while_completions_wait(ctx):
    import select

    handle = loopback(ctx)
    (fd, _events), = ctx.getPollFDList()
    done = []
    t = handle.getTransfer()
    t.setBulk(0x82, 64, callback=done.append, timeout=2000)
    t.submit()
    ready, _, _ = select.select([fd], [], [], 10)
    assert ready == [fd]
    ctx.handleEventsTimeout(0)
    assert done == [t]
    assert ctx.getNextTimeout() is None
    handle.close()


def test_completions_on_one_endpoint_come_back_in_submission_order(ctx):
    """The first IN waits for data, the second times out first: its callback still comes after
    the first one's."""
    handle = loopback(ctx)
    order = []
    first = handle.getTransfer()
    first.setBulk(0x81, 64, callback=lambda tr: order.append(("first", tr.getStatus())), timeout=600)
    second = handle.getTransfer()
    second.setBulk(0x81, 64, callback=lambda tr: order.append(("second", tr.getStatus())), timeout=100)
    first.submit()
    second.submit()
    pump(ctx, [first, second], lambda: len(order) == 2)
    assert order == [("first", usb1.TRANSFER_TIMED_OUT), ("second", usb1.TRANSFER_TIMED_OUT)]
    handle.close()


def test_resubmits_from_callbacks_keep_their_order_before_a_synchronous_call(ctx):
    """Transfers resubmitted inside handleEvents() are queued and go out together after the
    batch, or before any synchronous call a callback makes on the connection: the IN transfer
    resubmitted first gets the data the callback then writes, and the synchronous read that
    follows finds nothing (and times out)."""
    handle = loopback(ctx)
    with handle.claimInterface(0):
        seen = []
        state = {"round": 0, "sync": None}

        def on_in(transfer):
            seen.append(bytes(transfer.getBuffer()[:transfer.getActualLength()]))

        reader = handle.getTransfer()
        reader.setBulk(0x81, 64, callback=on_in, timeout=5000)

        def on_kick(transfer):
            state["round"] += 1
            reader.submit()  # queued until the batch ends...
            handle.bulkWrite(0x01, b"first", timeout=2000)  # ...but sent before this
            try:
                state["sync"] = handle.bulkRead(0x81, 64, timeout=300)
            except usb1.USBErrorTimeout:
                state["sync"] = "timed out"

        kick = handle.getTransfer()
        kick.setControl(0x80, 6, 0x0100, 0, 18, callback=on_kick, timeout=5000)
        kick.submit()
        pump(ctx, [kick, reader], lambda: seen)
        assert seen == [b"first"] and state["sync"] == "timed out"
