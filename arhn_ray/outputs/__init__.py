"""What a run leaves, in one place (where each file sits: data/layout.py): the parts' writer
(sink.py), the configuration it ran with (saved.py), its statistics (stats.py), the dataset card
(card.py), the review page (review.py), and the report that writes them at the end of a run
(report.py); and what reads an output folder alone: agreement.py, calibrate.py.
"""
