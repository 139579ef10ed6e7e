"""PersonalizationService: interactions, preference models trained by Celery, "for you" serving."""
