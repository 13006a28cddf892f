"""Default calibration sample: varied English text of different lengths and registers.

Calibration only sets public ranges; it should resemble what clients will send. The
server may pass its own sample (`compile_model(calibration_texts=...)`).
"""

from __future__ import annotations

_TEXTS = """\
The quick brown fox jumps over the lazy dog.
I can't believe how good this coffee is, best morning in weeks!
The committee postponed its decision until further evidence becomes available.
ugh my flight got cancelled again... stuck at the airport for 6 hours
Photosynthesis converts light energy into chemical energy stored in glucose.
What time does the pharmacy on 5th street close on Sundays?
She sold her grandmother's piano to pay for the first year of medical school.
This is, without exaggeration, the worst customer service I have ever experienced.
Revenue grew 14% year over year, driven by strong demand in Asia-Pacific markets.
lol no way that actually happened
The court held that the contract was void for lack of consideration.
Add two cups of flour, a pinch of salt, and stir until the dough is smooth.
Self-driving cars will change how cities are designed, for better or worse.
He scored twice in the final ten minutes and the crowd went absolutely wild!!!
Please find attached the revised schedule for the quarterly review meeting.
The mitochondria is the powerhouse of the cell.
I'm so tired of people telling me to just relax, it doesn't work like that.
Quantum entanglement does not allow faster-than-light communication.
Our neighbour's dog barked all night and nobody got any sleep.
Thank you so much for the birthday wishes everyone, feeling loved today
The patient presented with acute chest pain radiating to the left arm.
Stocks fell sharply after the central bank signalled further rate increases.
My phone battery dies in two hours now, absolutely useless piece of junk.
On a clear night far from the city you can see thousands of stars.
The algorithm runs in O(n log n) time and uses linear extra memory.
Honestly the sequel was better than the original, fight me.
Volunteers planted more than two thousand trees along the river bank this weekend.
Why does every app need my location, contacts and microphone access?
The museum's new wing houses a collection of 19th-century Japanese prints.
Traffic on the bridge is backed up for miles because of an accident.
Wow. Just wow. Did not see that ending coming at all.
Remember to back up your files before installing the update.
The senator denied the allegations and called the report politically motivated.
Best concert ever, the band played for three hours straight
Rain is expected to continue through Thursday with possible flooding in low areas.
I lost my wallet on the train and someone actually returned it with everything inside.
Interest rates, inflation and unemployment are closely linked in the short run.
Can anyone recommend a good book about the history of mathematics?
The new update broke everything, can't even log in anymore #fail
Kids these days will never know the pain of rewinding a cassette with a pencil.
A gentle breeze carried the smell of fresh bread from the bakery across the square.
The software license prohibits reverse engineering, decompilation and disassembly.
I absolutely love this little cafe, the staff are so friendly and the cakes are amazing.
Terrible weather, terrible traffic, terrible day. Going back to bed.
The experiment was repeated three times with consistent results across all trials.
Congratulations to the whole team on shipping the release ahead of schedule!
"""


def default_calibration_texts() -> list[str]:
    """The bundled calibration sentences (46 lines)."""
    return [t for t in _TEXTS.splitlines() if t.strip()]
