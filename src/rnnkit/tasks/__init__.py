"""Tasks of recurrent models: forecasting series and modelling text.

A task turns data into trained models and results. It never prints and never
reads the terminal; callers pass a progress callback and decide what to show.
"""
