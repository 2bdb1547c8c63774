"""The reproduce.py machinery: a tree of configs as a plan, its runs in child processes, the table
and the figures. It drives the training library (utils/, methods/, nets/) through the training
scripts only, so nothing here trains a network itself.
"""
