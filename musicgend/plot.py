"""Piano-roll pictures of MIDI files (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

from musicgend.errors import MidiFileError, OutputError
from musicgend.io.midifile import read_tracks

NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def pitch_name(pitch: int) -> str:
    """Scientific pitch name of a MIDI note number (60 → ``"C4"``)."""
    return f"{NOTE_NAMES[pitch % 12]}{pitch // 12 - 1}"


def picture_path(path: str | Path) -> Path:
    """Where a picture asked for as ``path`` goes: ``.png`` is added when it has no
    extension; an extension matplotlib can't write is refused."""
    from matplotlib.backend_bases import FigureCanvasBase

    path = Path(path)
    if path.is_dir():
        return path  # check_output_file names the problem
    suffix = path.suffix.lower().removeprefix(".")
    if not suffix:
        return path.with_name(path.name + ".png")
    formats = FigureCanvasBase.get_supported_filetypes()
    if suffix not in formats:
        known = ", ".join(f".{ext}" for ext in sorted(formats))
        raise OutputError(f"{path}: can't draw a .{suffix} picture (use one of {known})")
    return path


def plot_midi(midi_path: str | Path, png_path: str | Path, title: str | None = None) -> Path:
    """Draw every non-drum note of ``midi_path`` as a bar (time in s × pitch) into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    midi_path, png_path = Path(midi_path), Path(png_path)
    tracks = [t for t in read_tracks(midi_path) if not t.is_drum and t.notes]
    if not tracks:
        raise MidiFileError(midi_path, "no notes to plot")
    notes = [n for t in tracks for n in t.notes]
    lo = min(n.pitch for n in notes)
    hi = max(n.pitch for n in notes)
    end_s = max(max(n.end_s for n in notes), max(t.end_time_s() for t in tracks))

    fig, ax = plt.subplots(figsize=(min(4 + end_s / 4, 24), min(2 + (hi - lo) / 5, 12)), dpi=100)
    try:
        colors = plt.get_cmap("tab10")
        for i, track in enumerate(tracks):
            ax.barh(
                [n.pitch for n in track.notes],
                [max(n.end_s - n.start_s, 0.01) for n in track.notes],
                left=[n.start_s for n in track.notes],
                height=0.8,
                color=colors(i % 10),
                edgecolor="black",
                linewidth=0.3,
                label=track.name or f"track {i + 1}",
            )
        if len(tracks) > 1:
            ax.legend(loc="upper right", fontsize="small")
        ax.set_xlim(0, max(end_s, 0.2))
        ax.set_ylim(lo - 1.5, hi + 1.5)
        span = hi - lo
        marks = range(12) if span <= 24 else ((0, 4, 7) if span <= 48 else (0,))
        ticks = [p for p in range(lo - 1, hi + 2) if p % 12 in marks and 0 <= p <= 127]
        ax.set_yticks(ticks)
        ax.set_yticklabels([pitch_name(p) for p in ticks])
        ax.set_xlabel("time (s)")
        ax.set_ylabel("pitch")
        ax.grid(axis="x", linestyle=":", linewidth=0.5)
        ax.set_title(title or f"{midi_path.name} — {len(notes)} notes, {end_s:.1f} s")
        fig.tight_layout()
        try:
            png_path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(png_path)
        except OSError as exc:
            raise MidiFileError(
                png_path, f"can't write the picture: {exc.strerror or exc}"
            ) from None
    finally:
        plt.close(fig)
    return png_path
