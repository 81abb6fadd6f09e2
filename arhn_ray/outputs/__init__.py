"""What a run leaves, in one place: the output folder's layout (layout.py), the configuration it
ran with (saved.py), its statistics (stats.py), the dataset card (card.py), the review page
(review.py), and the report that writes them at the end of a run (report.py). The commands that
read an output folder and nothing else live here too: relabel.py, agreement.py, calibrate.py.
"""
