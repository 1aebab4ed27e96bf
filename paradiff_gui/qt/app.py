"""``paradiff-gui``: the desktop app's entry point (QApplication on a qasync event loop).

Scripted mode, for demos, docs and tests::

    paradiff-gui --request FILE --autorun --screenshot OUT.png --quit-when-done

runs the request in the real window, saves a screenshot of the window once the picture is
shown, and exits 0 — or non-zero with the error on stderr. ``--stats`` prints the run's
figures (event-loop stall, preview rate) as one JSON line. Without ``--autorun``,
``--screenshot OUT.png --quit-when-done`` shows the request (its plan and regions) and saves the
window as soon as its plan is drawn.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import logging.handlers
import os
import sys
from pathlib import Path

from .logs import setup_logging

APP_NAME = "Paradiff"
ORG_NAME = "Paradiff"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="paradiff-gui", description="Paradiff desktop app")
    p.add_argument("--request", metavar="FILE", help="load a request (.json or a Paradiff image) into the panel")
    p.add_argument("--model", help="select this model (a builtin: id, a diffusers folder or a .safetensors file)")
    p.add_argument("--open", metavar="IMAGE", help="open an image for seam inspection")
    p.add_argument("--autorun", action="store_true", help="press Generate once the window is up")
    p.add_argument("--screenshot", metavar="PNG",
                   help="save a screenshot of the window when the run is done (without --autorun: once the plan "
                        "is drawn)")
    p.add_argument("--export", metavar="FILE", help="export the result here when the run is done")
    p.add_argument("--quit-when-done", action="store_true", help="exit after the run (0 = done, 1 = failed)")
    p.add_argument("--stats", action="store_true", help="print the run's figures as one JSON line on stdout")
    p.add_argument("--theme", choices=("system", "light", "dark"), default="system")
    p.add_argument("--size", metavar="WxH", help="window size, e.g. 1600x1000 (for screenshots)")
    p.add_argument("--tiled", action="store_true", help="show the picture 2×2 (View → Show 2×2), to check that a "
                                                        "seamless picture tiles")
    return p.parse_args(argv)


def _qt_messages_to_log() -> None:
    """Qt's own warnings (e.g. the offscreen platform's "does not support propagateSizeHints")
    go to the log file, not the user's terminal."""
    from PySide6.QtCore import QtMsgType, qInstallMessageHandler

    qt_log = logging.getLogger("qt")
    levels = {QtMsgType.QtDebugMsg: logging.DEBUG, QtMsgType.QtInfoMsg: logging.INFO,
              QtMsgType.QtWarningMsg: logging.WARNING, QtMsgType.QtCriticalMsg: logging.ERROR,
              QtMsgType.QtFatalMsg: logging.CRITICAL}

    def handler(kind, _context, message: str) -> None:
        qt_log.log(levels.get(kind, logging.WARNING), "%s", message)

    qInstallMessageHandler(handler)


def make_app(argv: list[str], theme: str = "system"):
    os.environ.setdefault("QT_API", "pyside6")  # qasync picks the first binding it finds otherwise
    from PySide6.QtCore import QCoreApplication, Qt
    from PySide6.QtGui import QGuiApplication, QIcon
    from PySide6.QtWidgets import QApplication

    from .theme import apply_theme

    app = QApplication.instance()
    if app is None:
        QGuiApplication.setHighDpiScaleFactorRoundingPolicy(Qt.HighDpiScaleFactorRoundingPolicy.PassThrough)
        QCoreApplication.setOrganizationName(ORG_NAME)
        QCoreApplication.setApplicationName(APP_NAME)
        app = QApplication(argv)
        app.setDesktopFileName("paradiff")
    # The icon lives in the source tree's resources/ (the installers install it from there too).
    icon = Path(__file__).resolve().parents[2] / "resources" / "paradiff.png"
    if icon.is_file():
        app.setWindowIcon(QIcon(str(icon)))
    apply_theme(app, theme)
    return app


async def _scripted(window, args: argparse.Namespace) -> int:
    """Run the request in the window and report; returns the exit code."""
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[str] = loop.create_future()
    shown: asyncio.Future[object] = loop.create_future()
    window.run_ended.connect(lambda outcome: ended.done() or ended.set_result(outcome))
    window.result_ready.connect(lambda r: shown.done() or shown.set_result(r))
    if not window.generate():
        print(f"paradiff-gui: {window.last_error}", file=sys.stderr)
        return 2
    outcome = await ended
    if outcome != "finished":
        print(f"paradiff-gui: {outcome}: {window.last_error or ''}".rstrip(": "), file=sys.stderr)
        return 130 if outcome == "cancelled" else 1
    await shown
    if args.export:
        exported: asyncio.Future[str] = loop.create_future()
        window.exported.connect(lambda p: exported.done() or exported.set_result(p))
        window.export_failed.connect(lambda m: exported.done() or exported.set_exception(OSError(m)))
        window.export(args.export)
        try:
            print(f"paradiff-gui: wrote {await exported}", file=sys.stderr)
        except OSError as exc:
            print(f"paradiff-gui: export: {exc}", file=sys.stderr)
            return 1
    if args.screenshot:
        scored: asyncio.Future[object] = loop.create_future()
        if window.current is not None and window.current.report is None:
            window.scored.connect(lambda r: scored.done() or scored.set_result(r))
            await scored  # the seam table and heatmap are part of the picture
        await asyncio.sleep(0.2)  # let the last paints land
        if not window.grab().save(args.screenshot):
            print(f"paradiff-gui: screenshot: could not write {args.screenshot}", file=sys.stderr)
            return 1
        print(f"paradiff-gui: wrote {args.screenshot}", file=sys.stderr)
    if args.stats:
        print(json.dumps(window.stats))
    return 0


async def _still(window, args: argparse.Namespace) -> int:
    """Save a screenshot of the window once its plan is drawn (no run); returns the exit code."""
    for _ in range(200):  # the plan is built off the GUI thread: up to 10 s
        if not window.plan_summary.pending:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # let the last paints land
    if not window.grab().save(args.screenshot):
        print(f"paradiff-gui: screenshot: could not write {args.screenshot}", file=sys.stderr)
        return 1
    print(f"paradiff-gui: wrote {args.screenshot}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    size = None
    if args.size:
        from ..engine.core.request import RequestError, parse_size

        try:
            size = parse_size(args.size)
        except RequestError as exc:
            print(f"paradiff-gui: --size: {exc.message}", file=sys.stderr)
            return 2
    log_path = setup_logging()
    try:
        import qasync
    except ImportError:
        print("paradiff-gui: the desktop app needs PySide6 and qasync: pip install 'paradiff-gui[gui]'",
              file=sys.stderr)
        return 3
    _qt_messages_to_log()
    app = make_app(sys.argv[:1], args.theme)
    from .window import MainWindow

    scripted = (args.autorun or bool(args.screenshot)) and args.quit_when_done
    window = MainWindow(interactive=not scripted)
    if size is not None:
        window.resize(*size)
    if args.tiled:
        window.act_tiled.setChecked(True)
    if args.model:
        window.panel.add_model(args.model)
    if args.request and not window.load_request(args.request):
        print(f"paradiff-gui: {window.last_error}", file=sys.stderr)
        if scripted:
            return 2
    window.show()
    if args.open:
        window.open_image(args.open)
    logging.getLogger(__name__).info("started; log at %s", log_path)

    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    code = 0
    with loop:
        if args.autorun or args.screenshot:
            task = loop.create_task(_scripted(window, args) if args.autorun else _still(window, args))
            if args.quit_when_done:
                code = loop.run_until_complete(task)
                window.close()
                return _exit(code)
        closed = asyncio.Event()
        app.aboutToQuit.connect(closed.set)
        loop.run_until_complete(closed.wait())
    return _exit(code)


def _exit(code: int) -> int:
    """``code``, or leave at once when a generation thread ignored its cancel (the window closed
    without it): tearing Qt down would destroy that running QThread and abort the process."""
    from .bridge import workers_running

    if workers_running():
        logging.getLogger(__name__).warning("a generation did not stop; leaving without waiting for it")
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
