"""matplotlib in a Cinch sandbox: figures become PNG files in ``out/``.

The image sets ``MPLBACKEND=module://cinch_matplotlib``: this module is then
matplotlib's backend, Agg's canvas and manager with a ``show()`` that saves every
open figure as ``out/figure-N.png`` (N counts from 1 across the run) and closes it.
At the end of the program the loader calls :func:`save_open_figures` for the
figures still open, numbered on.  ``out/`` is in the working directory
(/tmp/work), whatever the program's current directory is by then.

This module never imports matplotlib itself: ``cinch_matplotlib.pth`` imports it
at every interpreter start-up, where it only hooks matplotlib's first import to
put the font list built at image build (``/opt/cinch/matplotlib``) into the
writable ``MPLCONFIGDIR`` (matplotlib insists on a writable one, and would spend a
second or more rebuilding the list in each sandbox otherwise).
"""

import os
import sys

OUT_DIR = "/tmp/work/out"
FONT_CACHE_DIR = "/opt/cinch/matplotlib"

_next_number = 1


_FROM_AGG = ("FigureCanvas", "FigureManager", "backend_version")


def __getattr__(name):
    # What matplotlib asks of a backend module, taken from Agg only when it asks
    # (pyplot has imported matplotlib by then), and kept in this module's namespace:
    # pyplot builds its backend class from vars(module) right after its first look.
    if name in _FROM_AGG:
        from matplotlib.backends import backend_agg

        for attr in _FROM_AGG:
            globals()[attr] = getattr(backend_agg, attr)
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def show(*args, **kwargs):
    """``pyplot.show()``: save every open figure to out/figure-N.png, then close them.

    A figure that cannot be saved raises here, in the program, once the others are saved.
    """
    errors = [error for _path, error in _save_all() if error is not None]
    if errors:
        raise errors[0]


def save_open_figures():
    """Save the figures still open (when the program ends); returns the paths written.

    Does nothing, and imports nothing, unless the program imported
    ``matplotlib.pyplot``.  Never raises: a figure that cannot be saved is reported
    on stderr and the others are still saved.
    """
    if "matplotlib.pyplot" not in sys.modules:
        return []
    written = []
    try:
        for path, error in _save_all():
            if error is None:
                written.append(path)
            else:
                print(f"cinch: could not save {path}: {error!r}", file=sys.stderr)
    except Exception as exc:
        print(f"cinch: could not save the open figures: {exc!r}", file=sys.stderr)
    return written


def _save_all():
    """Yield ``(path, None)`` per figure saved, ``(path, exception)`` per failure."""
    global _next_number
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None:
        import matplotlib.pyplot as plt
    numbers = plt.get_fignums()
    if numbers:
        os.makedirs(OUT_DIR, exist_ok=True)
    for num in numbers:
        fig = plt.figure(num)
        path = os.path.join(OUT_DIR, f"figure-{_next_number}.png")
        _next_number += 1
        try:
            fig.savefig(path, format="png")
        except Exception as exc:
            yield path, exc
        else:
            yield path, None
        finally:
            plt.close(fig)


class _FontCacheHook:
    """On the first import of matplotlib, link the prebuilt font list into MPLCONFIGDIR.

    A meta path finder that finds nothing: it only acts, once, then leaves.
    """

    @staticmethod
    def find_spec(fullname, path=None, target=None):
        if fullname == "matplotlib":
            try:
                sys.meta_path.remove(_FontCacheHook)
            except ValueError:
                pass
            _link_font_cache(os.environ.get("MPLCONFIGDIR", ""))
        return None


def _link_font_cache(config_dir):
    if not config_dir or os.path.realpath(config_dir) == FONT_CACHE_DIR:
        return
    try:
        names = [n for n in os.listdir(FONT_CACHE_DIR) if n.endswith(".json")]
        os.makedirs(config_dir, exist_ok=True)
        for name in names:
            try:
                os.symlink(os.path.join(FONT_CACHE_DIR, name), os.path.join(config_dir, name))
            except FileExistsError:
                pass
    except OSError:
        pass  # matplotlib then builds the list itself: slower, still correct


def _install_hook():
    if "matplotlib" not in sys.modules and _FontCacheHook not in sys.meta_path:
        sys.meta_path.insert(0, _FontCacheHook)


_install_hook()
