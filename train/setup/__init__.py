"""The steps ``brushtrain fit`` runs before training, each in its own module: the checks of every setting
(``validation``), the files rank 0 prepares (``prepare``), the process settings (``runtime``) and the
assembly of callbacks, module and Trainer (``build``)."""
